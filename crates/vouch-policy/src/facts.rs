//! What the policies know about workloads: facts from the SPIFFE ID and the registration entries,
//! built into Cedar entities once and looked up by SPIFFE ID for each decision.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast::{Entity as CoreEntity, PartialValue, Value};
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
    /// The vouch namespaces of the entries.
    pub namespaces: BTreeSet<String>,
}

impl Facts {
    fn add(&mut self, entry: &Entry) {
        self.registered = true;
        self.namespaces.insert(entry.namespace.to_string());
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
    entity: Arc<CoreEntity>,
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

/// A set of strings as a Cedar value.
fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> Value {
    Value::set(values.into_iter().map(Value::from), None)
}

/// The `path` attribute of a SPIFFE ID's entity: its path without the leading `/`. The index looks
/// guards up by the same value, so both take it from here.
pub(crate) fn path_attr(id: &SpiffeId) -> &str {
    id.path().strip_prefix('/').unwrap_or(id.path())
}

/// The `segments` attribute of a SPIFFE ID's entity.
pub(crate) fn segments_attr(id: &SpiffeId) -> impl Iterator<Item = &str> {
    path_attr(id).split('/').filter(|s| !s.is_empty())
}

/// The Cedar entity of `id` as type `kind` (`Workload` or `Service`) with `facts`.
pub(crate) fn spiffe_entity(
    kind: &str,
    id: &SpiffeId,
    facts: &Facts,
) -> Result<Arc<CoreEntity>, PolicyError> {
    let path = path_attr(id);
    Ok(entity(
        &uid(kind, id.as_str())?,
        [
            ("trust_domain", Value::from(id.trust_domain().as_str())),
            ("path", Value::from(path)),
            ("segments", strings(segments_attr(id))),
            ("registered", Value::from(facts.registered)),
            ("owners", strings(facts.owners.iter().map(String::as_str))),
            ("k8s_namespaces", strings(facts.k8s_namespaces.iter().map(String::as_str))),
            ("k8s_service_accounts", strings(facts.k8s_service_accounts.iter().map(String::as_str))),
            ("node_groups", strings(facts.node_groups.iter().map(String::as_str))),
            ("namespaces", strings(facts.namespaces.iter().map(String::as_str))),
        ],
    ))
}

/// An entity without parents, built from values directly: Cedar's public constructor evaluates
/// each attribute as an expression, which was a tenth of a decision's time.
fn entity<const N: usize>(uid: &EntityUid, attrs: [(&'static str, Value); N]) -> Arc<CoreEntity> {
    Arc::new(CoreEntity::new_with_attr_partial_value(
        uid.as_ref().clone(),
        attrs.into_iter().map(|(name, value)| (name.into(), PartialValue::from(value))),
        HashSet::new(),
        HashSet::new(),
        [],
    ))
}

/// The `namespaces` of a secret path or role name: its first segment if it has more than one.
fn namespace_of_name(name: &str) -> Option<&str> {
    name.split_once('/').map(|(first, _)| first)
}

/// The Cedar entity of a resource.
pub(crate) fn resource_entity(
    resource: &vouch_core::grant::Resource,
    workloads: &Workloads,
) -> Result<Arc<CoreEntity>, PolicyError> {
    use vouch_core::grant::Resource;
    Ok(match resource {
        Resource::Secret(path) => entity(
            &uid(ResourceKind::Secret.entity_type(), path.as_str())?,
            [
                ("path", Value::from(path.as_str())),
                ("dirs", strings(path.dirs())),
                ("namespaces", strings(namespace_of_name(path.as_str()))),
            ],
        ),
        Resource::DbRole(name) => entity(
            &uid(ResourceKind::DbRole.entity_type(), name.as_str())?,
            [("name", Value::from(name.as_str())), ("namespaces", strings(namespace_of_name(name.as_str())))],
        ),
        Resource::Service(id) => match workloads.get(id) {
            Some(w) => spiffe_entity(ResourceKind::Service.entity_type(), id, &w.facts)?,
            None => spiffe_entity(ResourceKind::Service.entity_type(), id, &Facts::default())?,
        },
    })
}

impl Workload {
    /// A workload from its SPIFFE ID and the facts of its entries.
    pub fn new(id: SpiffeId, facts: Facts) -> Result<Self, PolicyError> {
        let entity = spiffe_entity("Workload", &id, &facts)?;
        Ok(Self { id, facts, entity })
    }

    /// Its Cedar entity.
    pub(crate) fn entity(&self) -> &Arc<CoreEntity> {
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
