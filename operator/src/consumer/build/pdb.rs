//! The consumer pods' PodDisruptionBudget: with more than one replica, a voluntary
//! disruption (a node drain) takes down at most one pod at a time. A single replica gets none,
//! since a budget for it would block every drain.

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{metadata, selector_labels};
use crate::consumer::validate::ValidConsumer;

/// The budget, or `None` when the consumer should have none.
pub fn build(valid: &ValidConsumer) -> Option<PodDisruptionBudget> {
    // Autoscaled: by the most pods, so the budget does not come and go with the load (with
    // one pod or none, `maxUnavailable: 1` blocks no drain).
    let pods = valid.autoscaling.as_ref().map_or(valid.replicas, |a| a.max);
    (pods > 1).then(|| PodDisruptionBudget {
        metadata: metadata(valid),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&valid.name)),
                ..LabelSelector::default()
            }),
            // A pod that is not ready is not serving; evicting it must not wait for it.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::validate::tests::{MINIMAL, validated};

    #[test]
    fn only_with_more_than_one_replica() {
        assert!(build(&validated(MINIMAL)).is_none());
        let pdb = build(&validated(&format!("{MINIMAL}replicas: 2\n"))).unwrap();
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "orders.reader"
        );
    }
}
