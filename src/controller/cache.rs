//! What the controller's watch cache keeps of a JobRetry. The cache only triggers reconciles
//! and answers the between-batch check (suspended, deleted, replaced?), and a reconcile reads
//! its object afresh, so the cache drops what can be large: the status rows and preview, the
//! id list, managed fields and kubectl's last-applied copy. An operator watching many big
//! objects then holds little more than their metadata.

use kube::ResourceExt;

use crate::crd::JobRetry;

/// kubectl's copy of the applied manifest (as large as the spec).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Strips `obj` down to what the cache is read for: metadata (name, namespace, uid,
/// generation, deletionTimestamp), spec.suspend and the rest of the small spec, status.phase.
pub fn slim(obj: &mut JobRetry) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut().remove(LAST_APPLIED);
    if let Some(ids) = obj.spec.job_ids.as_mut() {
        ids.clear();
        ids.shrink_to_fit();
    }
    if let Some(status) = obj.status.as_mut() {
        status.jobs = Vec::new();
        status.preview = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Phase;

    #[test]
    fn the_cache_keeps_identity_suspend_and_phase_but_no_rows() {
        let yaml = format!(
            "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: r\n  namespace: ns\n  uid: u1\n  annotations: {{{LAST_APPLIED}: big, team: a}}\n  managedFields: [{{manager: kubectl, operation: Apply}}]\nspec:\n  queue: {{name: q}}\n  connection: {{secretRef: {{name: redis}}}}\n  jobIds: ['1', '2']\n  suspend: true\nstatus:\n  phase: Succeeded\n  jobs: [{{id: '1', result: Retried}}]\n"
        );
        let mut obj: JobRetry = serde_norway::from_str(&yaml).unwrap();
        slim(&mut obj);
        assert_eq!(
            (obj.name_any(), obj.namespace(), obj.uid()),
            (
                "r".to_string(),
                Some("ns".to_string()),
                Some("u1".to_string())
            )
        );
        assert!(obj.spec.suspend);
        let status = obj.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some(Phase::Succeeded.as_str()));
        assert!(status.jobs.is_empty() && obj.managed_fields().is_empty());
        assert_eq!(obj.spec.job_ids, Some(vec![]));
        assert_eq!(obj.annotations().keys().collect::<Vec<_>>(), ["team"]);
    }
}
