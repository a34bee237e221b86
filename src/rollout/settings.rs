//! A rollout's spec turned into the settings the planner, the node machine and the drain
//! use. The API server validates the spec's shape; what it cannot check (selectors that
//! do not parse) is reported here, naming the field.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::planner::{MaxUnavailable, WavePolicy};
use crate::api::ztunnel_rollout::ZtunnelRolloutSpec;
use crate::drain::DrainOptions;
use crate::drain::filter::FilterOptions;
use crate::duration::parse_duration;
use crate::label_selector::Selector;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str) -> impl FnOnce(String) -> SpecError {
    move |message| SpecError { field, message }
}

#[derive(Debug, Clone)]
pub struct RolloutSettings {
    pub nodes: Selector,
    pub waves: WavePolicy,
    pub drain: DrainOptions,
    pub ztunnel_ready_timeout: Duration,
}

pub fn max_unavailable(value: &IntOrString) -> Result<MaxUnavailable, String> {
    match value {
        IntOrString::Int(n) if *n >= 1 => Ok(MaxUnavailable::Count(n.unsigned_abs())),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|p| (1..=100).contains(p))
            .map(MaxUnavailable::Percent)
            .ok_or_else(|| format!("{s:?} is not a percentage from 1% to 100%")),
        IntOrString::Int(n) => Err(format!("{n} is not a count of at least 1")),
    }
}

pub fn settings(spec: &ZtunnelRolloutSpec) -> Result<RolloutSettings, SpecError> {
    let nodes = match &spec.node_selector {
        Some(ls) => {
            Selector::from_label_selector(ls).map_err(|e| invalid("nodeSelector")(e.to_string()))?
        }
        None => Selector::everything(),
    };
    let skip_selector = spec
        .drain
        .skip_pod_selector
        .as_ref()
        .map(Selector::from_label_selector)
        .transpose()
        .map_err(|e| invalid("drain.skipPodSelector")(e.to_string()))?;
    let timeout = spec
        .drain
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(invalid("drain.timeout"))?;
    let skip_wait = spec
        .drain
        .skip_wait_for_delete_timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(invalid("drain.skipWaitForDeleteTimeout"))?;
    let defaults = DrainOptions::default();
    Ok(RolloutSettings {
        nodes,
        waves: WavePolicy {
            group_by: spec.waves.group_by.clone(),
            order: spec.waves.order.clone(),
            max_unavailable: max_unavailable(&spec.waves.max_unavailable)
                .map_err(invalid("waves.maxUnavailable"))?,
            canary: spec.waves.canary_nodes.map(|c| c as usize),
        },
        drain: DrainOptions {
            filter: FilterOptions {
                delete_emptydir_data: spec.drain.delete_empty_dir_data,
                force: spec.drain.force,
                pod_selector: Selector::everything(),
                skip_selector,
                skip_wait_for_delete_timeout: skip_wait.filter(|d| !d.is_zero()),
            },
            timeout: timeout.unwrap_or(defaults.timeout),
            grace_period_seconds: spec.drain.grace_period_seconds,
            ..defaults
        },
        ztunnel_ready_timeout: parse_duration(&spec.ztunnel_ready_timeout)
            .map_err(invalid("ztunnelReadyTimeout"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ztunnel_rollout::{DrainSpec, WavesSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn spec() -> ZtunnelRolloutSpec {
        serde_json::from_value(serde_json::json!({
            "waves": { "groupBy": "topology.kubernetes.io/zone", "maxUnavailable": "10%" }
        }))
        .unwrap()
    }

    #[test]
    fn defaults_give_every_node_five_minute_timeouts_and_a_percentage_budget() {
        let s = settings(&spec()).unwrap();
        assert!(s.nodes.matches(&BTreeMap::new()));
        assert_eq!(s.waves.max_unavailable, MaxUnavailable::Percent(10));
        assert_eq!(s.ztunnel_ready_timeout, Duration::from_secs(300));
        assert_eq!(s.drain.timeout, Duration::from_secs(300));
        assert_eq!(s.drain.grace_period_seconds, None);
    }

    #[test]
    fn max_unavailable_takes_counts_and_percentages_only_in_range() {
        assert_eq!(
            max_unavailable(&IntOrString::Int(3)),
            Ok(MaxUnavailable::Count(3))
        );
        assert_eq!(
            max_unavailable(&IntOrString::String("100%".into())),
            Ok(MaxUnavailable::Percent(100))
        );
        for bad in ["0%", "101%", "ten", "5"] {
            assert!(max_unavailable(&IntOrString::String(bad.into())).is_err());
        }
        assert!(max_unavailable(&IntOrString::Int(0)).is_err());
    }

    #[test]
    fn the_skip_selector_leaves_matching_pods_alone() {
        let mut s = spec();
        s.drain = DrainSpec {
            skip_pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("keep".into(), "yes".into())])),
                ..Default::default()
            }),
            timeout: Some("90s".into()),
            ..Default::default()
        };
        let d = settings(&s).unwrap().drain;
        let keep = BTreeMap::from([("keep".to_owned(), "yes".to_owned())]);
        let skip = d.filter.skip_selector.unwrap();
        assert!(skip.matches(&keep));
        assert!(!skip.matches(&BTreeMap::new()));
        assert_eq!(d.timeout, Duration::from_secs(90));
    }

    #[test]
    fn a_bad_selector_names_its_field() {
        let mut s = spec();
        s.waves = WavesSpec {
            max_unavailable: IntOrString::Int(1),
            ..s.waves
        };
        s.node_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("bad key!".into(), "x".into())])),
            ..Default::default()
        });
        let e = settings(&s).unwrap_err();
        assert_eq!(e.field, "nodeSelector");
        assert!(e.to_string().starts_with("spec.nodeSelector: "), "{e}");
    }
}
