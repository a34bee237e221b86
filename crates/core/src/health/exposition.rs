//! Reads the Prometheus text exposition format (0.0.4, and the sample lines of
//! OpenMetrics text) one line at a time, for the ztunnel gate: it sums a few counters
//! and gauges of a ztunnel pod's `/metrics`, so samples with their labels are all it
//! needs, and `# HELP` / `# TYPE` lines are read only to be checked.
//!
//! Why a parser of our own: the crate used before (`prometheus-parse`) has had no
//! release since December 2023 and brought `chrono`, `regex` and `itertools` along for
//! a dozen lines' worth of grammar; its regular expression also cut label sets at the
//! first `}` inside a quoted value. Why here: the core is free of HTTP, so the grammar
//! is tested on its own, including a property test that writes random expositions and
//! reads them back.
//!
//! Histograms and summaries need nothing special: their `_bucket`, `_sum` and `_count`
//! series are ordinary sample lines. Each line borrows from the text; only a label
//! value or help text with escapes is copied.

use std::borrow::Cow;

/// A metric family's `# TYPE`: the text format's five, and OpenMetrics' others, which
/// ztunnel's client library writes (its build information is an `info` family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
    Unknown,
    Info,
    StateSet,
    GaugeHistogram,
}

impl MetricType {
    pub const ALL: [Self; 9] = [
        Self::Counter,
        Self::Gauge,
        Self::Histogram,
        Self::Summary,
        Self::Untyped,
        Self::Unknown,
        Self::Info,
        Self::StateSet,
        Self::GaugeHistogram,
    ];

    /// The word in a `# TYPE` line.
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == word)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Untyped => "untyped",
            Self::Unknown => "unknown",
            Self::Info => "info",
            Self::StateSet => "stateset",
            Self::GaugeHistogram => "gaugehistogram",
        }
    }
}

/// One line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// Empty, or only blanks.
    Blank,
    /// A `#` line that is neither `# HELP` nor `# TYPE` (OpenMetrics' `# EOF` too).
    Comment,
    /// `# HELP name text`, the text unescaped (`\\`, `\n`).
    Help {
        metric: &'a str,
        text: Cow<'a, str>,
    },
    /// `# TYPE name type`.
    Type {
        metric: &'a str,
        kind: MetricType,
    },
    Sample(Sample<'a>),
}

/// A sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub metric: &'a str,
    /// In the order written, values unescaped; names are distinct.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// `NaN`, `+Inf` and `-Inf` included.
    pub value: f64,
    /// Milliseconds since the Unix epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Why a line is not in the text format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no valid metric name at the start of the line")]
    MetricName,
    #[error("`# {0}` without a valid metric name")]
    CommentMetricName(&'static str),
    #[error("`# TYPE {metric}` names no known type: {word:?}")]
    UnknownType { metric: String, word: String },
    #[error("text after `# TYPE {metric} {word}`")]
    TypeTrailingText { metric: String, word: String },
    #[error("no valid label name in the label set")]
    LabelName,
    #[error("label {0} has no `=`")]
    LabelEquals(String),
    #[error("label {0}'s value is not quoted")]
    LabelUnquoted(String),
    #[error("label {0}'s value has no closing quote")]
    LabelUnterminated(String),
    #[error("label {0} appears twice")]
    LabelTwice(String),
    #[error("the label set has no closing `}}`")]
    LabelsUnterminated,
    #[error("expected `,` or `}}` after label {0}")]
    LabelSeparator(String),
    #[error("no value")]
    NoValue,
    #[error("the value {0:?} is not a number")]
    Value(String),
    #[error("the timestamp {0:?} is not an integer of milliseconds")]
    Timestamp(String),
    #[error("text after the sample: {0:?}")]
    TrailingText(String),
}

/// A line that is not in the text format, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ExpositionError {
    /// From 1.
    pub line: usize,
    pub reason: LineError,
}

impl ExpositionError {
    /// What a gate reports: the line's number only. Nothing of the answer reaches status
    /// or Events: not the line, not the reason (which may quote a value or a label).
    pub fn untrusted(&self) -> String {
        format!(
            "malformed: line {} is not in the Prometheus text format",
            self.line
        )
    }
}

/// Every sample of an exposition, in order, skipping blank, comment, `# HELP` and
/// `# TYPE` lines (which are still checked). Stops being useful at the first error:
/// callers treat a malformed exposition as a whole, never as a partial read.
pub fn samples(text: &str) -> impl Iterator<Item = Result<Sample<'_>, ExpositionError>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| match parse_line(line) {
            Ok(Line::Sample(s)) => Some(Ok(s)),
            Ok(_) => None,
            Err(reason) => Some(Err(ExpositionError {
                line: i + 1,
                reason,
            })),
        })
}

/// Reads one line (without its line break; surrounding whitespace is ignored).
pub fn parse_line(line: &str) -> Result<Line<'_>, LineError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Line::Blank);
    }
    match line.strip_prefix('#') {
        Some(comment) => parse_comment(comment),
        None => parse_sample(line).map(Line::Sample),
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn skip_blanks(s: &str) -> &str {
    s.trim_start_matches(is_blank)
}

/// The next blank-separated token and what follows it (blanks not skipped).
fn token(s: &str) -> (&str, &str) {
    s.split_at(s.find(is_blank).unwrap_or(s.len()))
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` at the start of `s`, and the rest.
fn metric_name(s: &str) -> Option<(&str, &str)> {
    name(s, true)
}

/// `[a-zA-Z_][a-zA-Z0-9_]*` at the start of `s`, and the rest.
fn label_name(s: &str) -> Option<(&str, &str)> {
    name(s, false)
}

fn name(s: &str, colons: bool) -> Option<(&str, &str)> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':');
    let end = s.find(|c: char| !ok(c)).unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    match name.chars().next() {
        Some(first) if !first.is_ascii_digit() => Some((name, rest)),
        _ => None,
    }
}

fn parse_comment(comment: &str) -> Result<Line<'_>, LineError> {
    let (word, rest) = token(skip_blanks(comment));
    let kind = match word {
        "HELP" => "HELP",
        "TYPE" => "TYPE",
        _ => return Ok(Line::Comment),
    };
    let rest = skip_blanks(rest);
    let (metric, after) = match metric_name(rest) {
        Some((m, after)) if after.is_empty() || after.starts_with(is_blank) => (m, after),
        _ => return Err(LineError::CommentMetricName(kind)),
    };
    let after = skip_blanks(after);
    if kind == "HELP" {
        return Ok(Line::Help {
            metric,
            text: unescape_help(after),
        });
    }
    let (word, trailing) = token(after);
    let Some(kind) = MetricType::from_word(word) else {
        return Err(LineError::UnknownType {
            metric: metric.to_owned(),
            word: word.to_owned(),
        });
    };
    if !skip_blanks(trailing).is_empty() {
        return Err(LineError::TypeTrailingText {
            metric: metric.to_owned(),
            word: word.to_owned(),
        });
    }
    Ok(Line::Type { metric, kind })
}

/// Help text escapes only `\\` and `\n`; another backslash stays as written.
fn unescape_help(text: &str) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

fn parse_sample(line: &str) -> Result<Sample<'_>, LineError> {
    let (metric, rest) = metric_name(line).ok_or(LineError::MetricName)?;
    let (labels, rest) = match skip_blanks(rest).strip_prefix('{') {
        Some(set) => parse_labels(set)?,
        // The name must end at a blank: `a-1` is not the sample `a` of value -1.
        None if rest.starts_with(is_blank) => (Vec::new(), rest),
        None if rest.is_empty() => return Err(LineError::NoValue),
        None => return Err(LineError::MetricName),
    };
    let (value, rest) = token(skip_blanks(rest));
    if value.is_empty() {
        return Err(LineError::NoValue);
    }
    let value = parse_value(value).ok_or_else(|| LineError::Value(value.to_owned()))?;
    let rest = skip_blanks(rest);
    let (timestamp_ms, rest) = match token(rest) {
        // An OpenMetrics exemplar (`# {trace_id="..."} 1`) follows the value or the
        // timestamp; it says nothing the gate reads.
        ("", _) => (None, ""),
        (t, _) if t.starts_with('#') => (None, ""),
        (t, rest) => {
            let ms = t
                .parse::<i64>()
                .map_err(|_| LineError::Timestamp(t.to_owned()))?;
            (Some(ms), skip_blanks(rest))
        }
    };
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(LineError::TrailingText(rest.chars().take(40).collect()));
    }
    Ok(Sample {
        metric,
        labels,
        value,
        timestamp_ms,
    })
}

/// Go's `strconv.ParseFloat` spellings the format allows: decimals, exponents, `NaN`,
/// `+Inf`, `-Inf` (any case, as Rust's parser reads them too).
fn parse_value(token: &str) -> Option<f64> {
    token.parse::<f64>().ok()
}

type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// The label set after its `{`: the labels and what follows the closing `}`.
fn parse_labels(set: &str) -> Result<(Labels<'_>, &str), LineError> {
    let mut labels: Labels<'_> = Vec::new();
    let mut rest = set;
    loop {
        rest = skip_blanks(rest);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        if rest.is_empty() {
            return Err(LineError::LabelsUnterminated);
        }
        let (name, after) = label_name(rest).ok_or(LineError::LabelName)?;
        let after = skip_blanks(after)
            .strip_prefix('=')
            .ok_or_else(|| LineError::LabelEquals(name.to_owned()))?;
        let quoted = skip_blanks(after)
            .strip_prefix('"')
            .ok_or_else(|| LineError::LabelUnquoted(name.to_owned()))?;
        let (value, after) =
            unquote(quoted).ok_or_else(|| LineError::LabelUnterminated(name.to_owned()))?;
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(LineError::LabelTwice(name.to_owned()));
        }
        labels.push((name, value));
        rest = skip_blanks(after);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(LineError::LabelSeparator(name.to_owned()));
        }
    }
}

/// A label value after its opening quote: the value unescaped (`\\`, `\"`, `\n`; another
/// backslash stays as written, as Prometheus itself reads it) and what follows the
/// closing quote. `None` without a closing quote.
fn unquote(quoted: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut owned: Option<String> = None;
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let value = match owned {
                    Some(s) => Cow::Owned(s),
                    None => Cow::Borrowed(&quoted[..i]),
                };
                return Some((value, &quoted[i + 1..]));
            }
            '\\' => {
                let out = owned.get_or_insert_with(|| quoted[..i].to_owned());
                match chars.next()?.1 {
                    'n' => out.push('\n'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            c => {
                if let Some(out) = owned.as_mut() {
                    out.push(c);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;

    fn sample(line: &str) -> Sample<'_> {
        match parse_line(line) {
            Ok(Line::Sample(s)) => s,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn samples_with_and_without_labels_timestamps_and_special_values() {
        let s = sample("workload_manager_active_proxy_count 3");
        assert_eq!(
            (s.metric, s.labels.len(), s.value, s.timestamp_ms),
            ("workload_manager_active_proxy_count", 0, 3.0, None)
        );
        let s = sample(
            "  istio_tcp_connections_failed_total{reporter=\"source\", response_flags=\"DC,UF\",} 4.5e1 1700000000000  ",
        );
        assert_eq!(s.label("reporter"), Some("source"));
        assert_eq!(s.label("response_flags"), Some("DC,UF"));
        assert_eq!(s.label("absent"), None);
        assert_eq!((s.value, s.timestamp_ms), (45.0, Some(1_700_000_000_000)));
        assert!(sample("a NaN").value.is_nan());
        assert_eq!(sample("a +Inf").value, f64::INFINITY);
        assert_eq!(sample("a -Inf -5").value, f64::NEG_INFINITY);
        assert_eq!(sample("a -Inf -5").timestamp_ms, Some(-5));
        assert_eq!(sample("rule:a_b:rate5m{} 1").metric, "rule:a_b:rate5m");
        assert_eq!(
            sample("a{b=\"c\"}7").value,
            7.0,
            "no blank needed after the label set"
        );
        assert_eq!(sample("a\t{ b = \"c\" }\t2").label("b"), Some("c"));
        let exemplar = sample("a_total{b=\"c\"} 2 # {trace_id=\"x\"} 1.0");
        assert_eq!((exemplar.value, exemplar.timestamp_ms), (2.0, None));
        assert_eq!(sample("a_total 2 17 # {t=\"x\"} 1").timestamp_ms, Some(17));
    }

    #[test]
    fn label_values_are_unescaped_and_may_hold_any_delimiter() {
        let s = sample(r#"m{a="say \"hi\", then=go",b="x\\y\nz",c="}{ ,=",d="\t",e="ü"} 1"#);
        assert_eq!(s.label("a"), Some("say \"hi\", then=go"));
        assert_eq!(s.label("b"), Some("x\\y\nz"));
        assert_eq!(s.label("c"), Some("}{ ,="));
        assert_eq!(
            s.label("d"),
            Some("\\t"),
            "an unknown escape stays as written"
        );
        assert_eq!(s.label("e"), Some("ü"));
        assert!(matches!(s.labels[2].1, Cow::Borrowed(_)));
        assert!(matches!(s.labels[0].1, Cow::Owned(_)));
    }

    #[test]
    fn help_type_and_comment_lines() {
        assert_eq!(
            parse_line("# HELP m The total, with \\\\ and \\n."),
            Ok(Line::Help {
                metric: "m",
                text: Cow::Owned("The total, with \\ and \n.".to_owned())
            })
        );
        assert_eq!(
            parse_line("# HELP m"),
            Ok(Line::Help {
                metric: "m",
                text: Cow::Borrowed("")
            })
        );
        assert_eq!(
            parse_line("#  TYPE  m_total\tcounter "),
            Ok(Line::Type {
                metric: "m_total",
                kind: MetricType::Counter
            })
        );
        for kind in [
            "counter",
            "gauge",
            "histogram",
            "summary",
            "untyped",
            "unknown",
            "info",
            "stateset",
            "gaugehistogram",
        ] {
            let line = format!("# TYPE m {kind}");
            assert!(
                matches!(parse_line(&line), Ok(Line::Type { kind: k, .. }) if k.as_str() == kind)
            );
        }
        for comment in ["#", "# EOF", "#HELPER x", "# just words", "  # indented"] {
            assert_eq!(parse_line(comment), Ok(Line::Comment), "{comment:?}");
        }
        assert_eq!(parse_line(" \t "), Ok(Line::Blank));
    }

    #[test]
    fn an_openmetrics_exposition_as_ztunnel_writes_it() {
        let text = "\
# HELP istio_build Istio component build info.
# TYPE istio_build info
istio_build_info{component=\"ztunnel\",tag=\"1.28.0\"} 1
# HELP istio_tcp_connections_opened The total number of TCP connections opened.
# TYPE istio_tcp_connections_opened counter
# UNIT istio_tcp_connections_opened connections
istio_tcp_connections_opened_total{reporter=\"destination\",response_flags=\"-\"} 12
istio_tcp_connections_opened_created{reporter=\"destination\"} 1.7e9
# EOF
";
        let got: Vec<_> = samples(text).collect::<Result<_, _>>().expect("valid");
        assert_eq!(
            got.iter().map(|s| (s.metric, s.value)).collect::<Vec<_>>(),
            [
                ("istio_build_info", 1.0),
                ("istio_tcp_connections_opened_total", 12.0),
                ("istio_tcp_connections_opened_created", 1.7e9)
            ]
        );
    }

    #[test]
    fn malformed_lines_say_why() {
        use LineError as E;
        let cases: &[(&str, LineError)] = &[
            ("<html>oops</html>", E::MetricName),
            ("1abc 2", E::MetricName),
            ("a-1", E::MetricName),
            ("lonely", E::NoValue),
            ("a{} ", E::NoValue),
            ("this is not a sample", E::Value("is".into())),
            ("a 1 1.5", E::Timestamp("1.5".into())),
            ("a 1 2 3", E::TrailingText("3".into())),
            ("a{b=\"c\" 1", E::LabelSeparator("b".into())),
            ("a{b=\"c\",", E::LabelsUnterminated),
            ("a{b=\"c 1", E::LabelUnterminated("b".into())),
            ("a{b=\"c\\", E::LabelUnterminated("b".into())),
            ("a{b=c} 1", E::LabelUnquoted("b".into())),
            ("a{b} 1", E::LabelEquals("b".into())),
            ("a{9=\"x\"} 1", E::LabelName),
            ("a{b:c=\"x\"} 1", E::LabelEquals("b".into())),
            ("a{b=\"x\",b=\"y\"} 1", E::LabelTwice("b".into())),
            ("# HELP", E::CommentMetricName("HELP")),
            ("# TYPE 9m counter", E::CommentMetricName("TYPE")),
            (
                "# TYPE m countr",
                E::UnknownType {
                    metric: "m".into(),
                    word: "countr".into(),
                },
            ),
            (
                "# TYPE m gauge extra",
                E::TypeTrailingText {
                    metric: "m".into(),
                    word: "gauge".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_line(line).as_ref(), Err(want), "{line:?}");
        }
    }

    #[test]
    fn samples_skips_metadata_and_names_the_first_bad_line() {
        let text = "# HELP a A.\n# TYPE a gauge\na 1\n\nb{x=\"y\"} 2\n";
        let got: Vec<_> = samples(text).collect::<Result<_, _>>().expect("valid");
        assert_eq!(
            got.iter().map(|s| (s.metric, s.value)).collect::<Vec<_>>(),
            [("a", 1.0), ("b", 2.0)]
        );
        let err = samples("a 1\n# TYPE a nope\n")
            .find_map(Result::err)
            .expect("an error");
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("line 2: "), "{err}");
    }

    // The property test's writer: the text format as the Prometheus client libraries
    // write it, from the format's description.

    fn escape_label_value(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    fn escape_help(v: &str) -> String {
        v.replace('\\', "\\\\").replace('\n', "\\n")
    }

    fn format_value(v: f64) -> String {
        if v.is_nan() {
            "NaN".to_owned()
        } else if v == f64::INFINITY {
            "+Inf".to_owned()
        } else if v == f64::NEG_INFINITY {
            "-Inf".to_owned()
        } else {
            v.to_string()
        }
    }

    #[derive(Debug, Clone)]
    struct GenSample {
        labels: Vec<(String, String)>,
        value: f64,
        timestamp_ms: Option<i64>,
    }

    #[derive(Debug, Clone)]
    struct GenFamily {
        name: String,
        help: Option<String>,
        kind: Option<MetricType>,
        samples: Vec<GenSample>,
    }

    fn kinds() -> impl Strategy<Value = MetricType> {
        proptest::sample::select(MetricType::ALL.to_vec())
    }

    fn values() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            any::<f64>(),
            (0u64..1_000_000).prop_map(|v| v as f64),
        ]
    }

    fn gen_sample() -> impl Strategy<Value = GenSample> {
        let label = (
            "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
            // Any text, the delimiters and escapes weighted in.
            prop_oneof![
                "[\\\\\"\n{},= #a-z]{0,12}",
                any::<String>().prop_map(|s| s.chars().take(12).collect()),
            ],
        );
        (
            proptest::collection::btree_map(label.0, label.1, 0..5),
            values(),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(labels, value, timestamp_ms)| GenSample {
                labels: labels.into_iter().collect(),
                value,
                timestamp_ms,
            })
    }

    fn family() -> impl Strategy<Value = GenFamily> {
        (
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            // Help text ends the line, whose surrounding whitespace is not kept.
            proptest::option::of("([a-z.][a-zA-Z0-9\\\\\n\" {},.]{0,20}[a-z.])?"),
            proptest::option::of(kinds()),
            proptest::collection::vec(gen_sample(), 0..4),
        )
            .prop_map(|(name, help, kind, samples)| GenFamily {
                name,
                help,
                kind,
                samples,
            })
    }

    fn write(families: &[GenFamily], blank: &str) -> String {
        let mut out = String::new();
        for f in families {
            if let Some(help) = &f.help {
                let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(help));
            }
            if let Some(kind) = f.kind {
                let _ = writeln!(out, "# TYPE {} {}", f.name, kind.as_str());
            }
            for s in &f.samples {
                out.push_str(&f.name);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = write!(out, "{blank}{}", format_value(s.value));
                if let Some(t) = s.timestamp_ms {
                    let _ = write!(out, "{blank}{t}");
                }
                out.push('\n');
            }
        }
        out
    }

    fn same_value(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a == b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn written_expositions_read_back(
            families in proptest::collection::vec(family(), 0..6),
            blank in prop_oneof![Just(" "), Just("\t"), Just("  ")],
        ) {
            let text = write(&families, blank);
            let mut lines = text.lines().map(parse_line);
            for f in &families {
                if let Some(help) = &f.help {
                    let got = lines.next();
                    prop_assert_eq!(
                        got,
                        Some(Ok(Line::Help { metric: f.name.as_str(), text: Cow::Borrowed(help.as_str()) }))
                    );
                }
                if let Some(kind) = f.kind {
                    let got = lines.next();
                    prop_assert_eq!(got, Some(Ok(Line::Type { metric: f.name.as_str(), kind })));
                }
                for want in &f.samples {
                    let got = lines.next();
                    let Some(Ok(Line::Sample(got))) = got else {
                        return Err(TestCaseError::fail(format!("{want:?} read as {got:?}\n{text}")));
                    };
                    prop_assert_eq!(got.metric, f.name.as_str());
                    let labels: Vec<(&str, &str)> =
                        got.labels.iter().map(|(k, v)| (*k, v.as_ref())).collect();
                    let wanted: Vec<(&str, &str)> =
                        want.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    prop_assert_eq!(labels, wanted);
                    prop_assert!(same_value(got.value, want.value), "{} vs {}", got.value, want.value);
                    prop_assert_eq!(got.timestamp_ms, want.timestamp_ms);
                }
            }
            prop_assert_eq!(lines.next(), None);
            let count = families.iter().map(|f| f.samples.len()).sum::<usize>();
            prop_assert_eq!(samples(&text).filter(Result::is_ok).count(), count);
        }

        #[test]
        fn no_line_panics(line in any::<String>()) {
            let _ = parse_line(&line);
        }
    }
}
