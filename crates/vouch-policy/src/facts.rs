//! What the policies know about workloads: facts from the SPIFFE ID and the registration entries,
//! built into Cedar entities once and looked up by SPIFFE ID for each decision.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use vouch_core::grant::ResourceKind;
use vouch_core::{Entry, SpiffeId};

use crate::PolicyError;

/// The facts about one SPIFFE ID, merged over the entries that name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Whether any entry names the ID.
    pub registered: bool,
    /// The entries' owners (non-empty ones).
    pub owners: BTreeSet<String>,
    /// Values of `k8s:ns:` selectors.
    pub k8s_namespaces: BTreeSet<String>,
    /// Values of `k8s:sa:` selectors.
    pub k8s_service_accounts: BTreeSet<String>,
    /// Node groups (SPIFFE IDs) the entries are parented to.
    pub node_groups: BTreeSet<String>,
}

impl Facts {
    fn add(&mut self, entry: &Entry) {
        self.registered = true;
        if !entry.owner.is_empty() {
            self.owners.insert(entry.owner.clone());
        }
        for s in entry.selectors.iter().filter(|s| s.kind() == "k8s") {
            if let Some(ns) = s.value().strip_prefix("ns:") {
                self.k8s_namespaces.insert(ns.to_owned());
            } else if let Some(sa) = s.value().strip_prefix("sa:") {
                self.k8s_service_accounts.insert(sa.to_owned());
            }
        }
        if vouch_core::group::is_group_namespace(&entry.parent_id) {
            self.node_groups.insert(entry.parent_id.to_string());
        }
    }
}

/// A workload as the policies see it: its facts, and its Cedar entity built once.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// Its facts.
    pub facts: Facts,
    entity: Entity,
}

/// The Cedar uid of an entity of `kind` (one of the schema's type names, or `Action`) named
/// `name`. The type names are parsed once: a parse per decision cost more than the lookup.
pub(crate) fn uid(kind: &str, name: &str) -> Result<EntityUid, PolicyError> {
    static TYPES: OnceLock<HashMap<&'static str, EntityTypeName>> = OnceLock::new();
    let types = TYPES.get_or_init(|| {
        ["Workload", "Service", "Secret", "DbRole", "Action"]
            .into_iter()
            .filter_map(|k| EntityTypeName::from_str(k).ok().map(|t| (k, t)))
            .collect()
    });
    let t = types.get(kind).cloned().ok_or_else(|| PolicyError::Internal(format!("entity type `{kind}`")))?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(name)))
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(values.into_iter().map(|v| RestrictedExpression::new_string(v.to_owned())))
}

/// The Cedar entity of `id` as type `kind` (`Workload` or `Service`) with `facts`.
pub(crate) fn spiffe_entity(kind: &str, id: &SpiffeId, facts: &Facts) -> Result<Entity, PolicyError> {
    let path = id.path().strip_prefix('/').unwrap_or(id.path());
    let attrs = HashMap::from([
        ("trust_domain".to_owned(), RestrictedExpression::new_string(id.trust_domain().as_str().to_owned())),
        ("path".to_owned(), RestrictedExpression::new_string(path.to_owned())),
        ("segments".to_owned(), strings(path.split('/').filter(|s| !s.is_empty()))),
        ("registered".to_owned(), RestrictedExpression::new_bool(facts.registered)),
        ("owners".to_owned(), strings(facts.owners.iter().map(String::as_str))),
        ("k8s_namespaces".to_owned(), strings(facts.k8s_namespaces.iter().map(String::as_str))),
        ("k8s_service_accounts".to_owned(), strings(facts.k8s_service_accounts.iter().map(String::as_str))),
        ("node_groups".to_owned(), strings(facts.node_groups.iter().map(String::as_str))),
    ]);
    entity(uid(kind, id.as_str())?, attrs)
}

/// An entity without parents.
fn entity(uid: EntityUid, attrs: HashMap<String, RestrictedExpression>) -> Result<Entity, PolicyError> {
    Entity::new(uid, attrs, HashSet::new())
        .map_err(|e| PolicyError::Internal(format!("entity attributes: {e}")))
}

/// The Cedar entity of a resource.
pub(crate) fn resource_entity(
    resource: &vouch_core::grant::Resource,
    workloads: &Workloads,
) -> Result<Entity, PolicyError> {
    use vouch_core::grant::Resource;
    match resource {
        Resource::Secret(path) => {
            let attrs = HashMap::from([
                ("path".to_owned(), RestrictedExpression::new_string(path.as_str().to_owned())),
                ("dirs".to_owned(), strings(path.dirs())),
            ]);
            entity(uid(ResourceKind::Secret.entity_type(), path.as_str())?, attrs)
        }
        Resource::DbRole(name) => {
            let attrs = HashMap::from([(
                "name".to_owned(),
                RestrictedExpression::new_string(name.as_str().to_owned()),
            )]);
            entity(uid(ResourceKind::DbRole.entity_type(), name.as_str())?, attrs)
        }
        Resource::Service(id) => {
            let facts = workloads.get(id).map(|w| w.facts.clone()).unwrap_or_default();
            spiffe_entity(ResourceKind::Service.entity_type(), id, &facts)
        }
    }
}

impl Workload {
    /// A workload from its SPIFFE ID and the facts of its entries.
    pub fn new(id: SpiffeId, facts: Facts) -> Result<Self, PolicyError> {
        let entity = spiffe_entity("Workload", &id, &facts)?;
        Ok(Self { id, facts, entity })
    }

    /// Its Cedar entity.
    pub(crate) fn entity(&self) -> &Entity {
        &self.entity
    }
}

/// The workloads known from registration entries, by SPIFFE ID: the entity lookup of each
/// decision. An ID without entries is still a principal, with the facts its SPIFFE ID gives and
/// `registered == false`.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    by_id: HashMap<SpiffeId, Workload>,
}

impl Workloads {
    /// The workloads named by `entries`.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Result<Self, PolicyError> {
        let mut facts: HashMap<SpiffeId, Facts> = HashMap::new();
        for e in entries {
            facts.entry(e.spiffe_id.clone()).or_default().add(e);
        }
        let by_id = facts
            .into_iter()
            .map(|(id, f)| Ok((id.clone(), Workload::new(id, f)?)))
            .collect::<Result<_, _>>()?;
        Ok(Self { by_id })
    }

    /// The workload with this SPIFFE ID, if an entry names it.
    pub fn get(&self, id: &SpiffeId) -> Option<&Workload> {
        self.by_id.get(id)
    }

    /// How many workloads are known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
