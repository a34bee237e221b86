//! Reading any Kubernetes object's metadata (name, namespace, labels, owners) the way
//! the decisions need it, without kube's client crates.

use std::collections::BTreeMap;

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub trait ObjectMetaExt {
    /// The name, or the generated name while the object has none yet.
    fn name_any(&self) -> String;
    fn namespace(&self) -> Option<String>;
    fn labels(&self) -> &BTreeMap<String, String>;
    fn annotations(&self) -> &BTreeMap<String, String>;
    fn owner_references(&self) -> &[OwnerReference];
    /// The owner reference marked as controller.
    fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
    }
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

impl<K: Metadata<Ty = ObjectMeta>> ObjectMetaExt for K {
    fn name_any(&self) -> String {
        let m = self.metadata();
        m.name
            .clone()
            .or_else(|| m.generate_name.clone())
            .unwrap_or_default()
    }

    fn namespace(&self) -> Option<String> {
        self.metadata().namespace.clone()
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        self.metadata().labels.as_ref().unwrap_or(&EMPTY)
    }

    fn annotations(&self) -> &BTreeMap<String, String> {
        self.metadata().annotations.as_ref().unwrap_or(&EMPTY)
    }

    fn owner_references(&self) -> &[OwnerReference] {
        self.metadata()
            .owner_references
            .as_deref()
            .unwrap_or_default()
    }
}
