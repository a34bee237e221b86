//! Label selectors: the string form kubectl takes (`app=web,tier!=db,env in (a,b),!canary`)
//! and the API's `LabelSelector` objects, both matched against a pod's labels.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("invalid label selector {selector:?}: {reason}")]
    Invalid { selector: String, reason: String },
    #[error("unknown label selector operator {0:?} (want In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    text: String,
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses kubectl's selector syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a,b)`, `k`, `!k`, joined by commas.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let invalid = |reason: &str| SelectorError::Invalid {
            selector: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        for raw in split_top_level(text) {
            let term = raw.trim();
            if term.is_empty() {
                return Err(invalid("empty requirement"));
            }
            let set_op = [" notin ", " in "]
                .iter()
                .find_map(|op| term.find(op).map(|i| (i, *op)));
            let req = if let Some((i, op)) = set_op {
                let key = term[..i].trim();
                let rest = term[i + op.len()..].trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| invalid("set values must be in parentheses"))?;
                let values: BTreeSet<String> = inner
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.is_empty() || values.iter().any(|v| !valid_value(v)) {
                    return Err(invalid("bad value in set"));
                }
                if !valid_key(key) {
                    return Err(invalid(&format!("bad key {key:?}")));
                }
                if op == " in " {
                    Requirement::In(key.to_owned(), values)
                } else {
                    Requirement::NotIn(key.to_owned(), values)
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                Self::equality(k, v, false).ok_or_else(|| invalid("bad key or value"))?
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Self::equality(k, v, true).ok_or_else(|| invalid("bad key or value"))?
            } else if let Some(k) = term.strip_prefix('!') {
                let k = k.trim();
                valid_key(k)
                    .then(|| Requirement::DoesNotExist(k.to_owned()))
                    .ok_or_else(|| invalid(&format!("bad key {k:?}")))?
            } else {
                valid_key(term)
                    .then(|| Requirement::Exists(term.to_owned()))
                    .ok_or_else(|| invalid(&format!("bad key {term:?}")))?
            };
            requirements.push(req);
        }
        Ok(Self {
            requirements,
            text: text.to_owned(),
        })
    }

    fn equality(k: &str, v: &str, equal: bool) -> Option<Requirement> {
        let (k, v) = (k.trim(), v.trim());
        if !valid_key(k) || !valid_value(v) {
            return None;
        }
        let set = BTreeSet::from([v.to_owned()]);
        Some(if equal {
            Requirement::In(k.to_owned(), set)
        } else {
            Requirement::NotIn(k.to_owned(), set)
        })
    }

    /// Converts an API `LabelSelector`. As in Kubernetes, a selector with neither
    /// `matchLabels` nor `matchExpressions` selects everything.
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements: Vec<Requirement> = ls
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::In(k.clone(), BTreeSet::from([v.clone()])))
            .collect();
        let invalid = |reason: String| SelectorError::Invalid {
            selector: written(ls),
            reason,
        };
        for (k, v) in ls.match_labels.iter().flatten() {
            if !valid_key(k) {
                return Err(invalid(format!("{k:?} is not a valid label key")));
            }
            if !valid_value(v) {
                return Err(invalid(format!("{v:?} is not a valid label value")));
            }
        }
        for e in ls.match_expressions.iter().flatten() {
            if !valid_key(&e.key) {
                return Err(invalid(format!("{:?} is not a valid label key", e.key)));
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            requirements.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => return Err(SelectorError::UnknownOperator(other.to_owned())),
            });
        }
        let text = requirements
            .iter()
            .map(|r| {
                let list = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
                match r {
                    Requirement::In(k, vs) if vs.len() == 1 => format!("{k}={}", list(vs)),
                    Requirement::In(k, vs) => format!("{k} in ({})", list(vs)),
                    Requirement::NotIn(k, vs) => format!("{k} notin ({})", list(vs)),
                    Requirement::Exists(k) => k.clone(),
                    Requirement::DoesNotExist(k) => format!("!{k}"),
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self { requirements, text })
    }

    /// The API form: every requirement as a `matchExpressions` entry.
    pub fn to_label_selector(&self) -> LabelSelector {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let expression = |key: &str, operator: &str, values: Option<&BTreeSet<String>>| {
            LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values: values.map(|v| v.iter().cloned().collect()),
            }
        };
        let expressions: Vec<LabelSelectorRequirement> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::In(k, vs) => expression(k, "In", Some(vs)),
                Requirement::NotIn(k, vs) => expression(k, "NotIn", Some(vs)),
                Requirement::Exists(k) => expression(k, "Exists", None),
                Requirement::DoesNotExist(k) => expression(k, "DoesNotExist", None),
            })
            .collect();
        LabelSelector {
            match_expressions: (!expressions.is_empty()).then_some(expressions),
            match_labels: None,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// A `LabelSelector` as kubectl writes it: `app=web,tier in (a,b),!legacy`.
pub fn written(ls: &LabelSelector) -> String {
    let mut parts: Vec<String> = ls
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in ls.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_every_operator() {
        let s =
            Selector::parse("app=web, tier!=db,env in (prod, staging),zone notin (c),team,!canary")
                .unwrap();
        let good = labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("zone", "a"),
            ("team", "x"),
        ]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("canary".into(), "true".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("tier".into(), "db".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.remove("team");
        assert!(!s.matches(&bad));
        assert!(
            Selector::parse("app==web")
                .unwrap()
                .matches(&labels(&[("app", "web")]))
        );
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(Selector::parse("").unwrap().matches(&labels(&[])));
        assert!(Selector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn rejects_malformed_selectors_naming_them() {
        for bad in ["=web", "a,,b", "env in prod", "env in ()", "a b=c", "!"] {
            let err = Selector::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn an_invalid_api_selector_is_named_as_written() {
        let ls = LabelSelector {
            match_labels: Some(labels(&[("bad key!", "x")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        let err = Selector::from_label_selector(&ls).unwrap_err().to_string();
        assert!(err.contains("\"bad key!=x,tier in (a,b)\""), "{err}");
        assert!(!err.contains("LabelSelector {"), "{err}");
    }

    #[test]
    fn converts_api_selectors() {
        let ls = LabelSelector {
            match_labels: Some(labels(&[("app", "api")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "track".into(),
                operator: "NotIn".into(),
                values: Some(vec!["canary".into()]),
            }]),
        };
        let s = Selector::from_label_selector(&ls).unwrap();
        assert!(s.matches(&labels(&[("app", "api")])));
        assert!(!s.matches(&labels(&[("app", "api"), ("track", "canary")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        let all = Selector::from_label_selector(&LabelSelector::default()).unwrap();
        assert!(all.matches(&labels(&[])));
        let unknown = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "Gt".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert_eq!(
            Selector::from_label_selector(&unknown).unwrap_err(),
            SelectorError::UnknownOperator("Gt".into())
        );
    }

    #[test]
    fn the_api_form_selects_the_same_labels() {
        let text = Selector::parse("pool=blue,zone in (a,b),!canary,tier!=db").unwrap();
        let api = Selector::from_label_selector(&text.to_label_selector()).unwrap();
        for labels in [
            vec![("pool", "blue"), ("zone", "a")],
            vec![("pool", "blue"), ("zone", "c")],
            vec![("pool", "blue"), ("zone", "b"), ("canary", "")],
            vec![("pool", "blue"), ("zone", "b"), ("tier", "db")],
            vec![("pool", "green"), ("zone", "a")],
        ] {
            let labels: BTreeMap<String, String> = labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(text.matches(&labels), api.matches(&labels), "{labels:?}");
        }
        assert!(api.matches(&BTreeMap::from([
            ("pool".into(), "blue".into()),
            ("zone".into(), "a".into())
        ])));
    }
}
