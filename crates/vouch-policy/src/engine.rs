//! Policies, their index, and decisions.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Policy, PolicySet, PrincipalConstraint, ResourceConstraint, ValidationMode,
    Validator,
};
use cedar_policy_core::ast::{
    Context as CoreContext, EntityUIDEntry, Expr as CoreExpr, Literal, Request as CoreRequest, SlotEnv,
    ValueKind,
};
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;
use vouch_core::grant::{AccessRequest, Action, Resource, ResourceKind};

use crate::facts::{
    path_attr, resource_entity, segments_attr, spiffe_entity, uid, Facts, Workload, Workloads,
};
use crate::guard::{best_guard, path_keys, Fact, Guard};
use crate::PolicyError;

/// Largest policy text accepted, in bytes: a grant is a few lines; a larger text is a mistake or
/// an attempt to make every decision slow.
pub const MAX_POLICY_BYTES: usize = 16 * 1024;

/// The name of a policy document: 1 to 128 characters of `A-Z a-z 0-9 . _ -`. It is the Cedar
/// policy id, so decisions name it among their reasons.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(String);

impl PolicyId {
    /// Checks a name.
    pub fn new(s: &str) -> Result<Self, PolicyError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(PolicyError::BadId(s.chars().take(128).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One policy document: a name and exactly one static Cedar policy, parsed and validated against
/// the schema.
#[derive(Debug, Clone)]
pub struct PolicyDoc {
    id: PolicyId,
    text: String,
    policy: Policy,
    compiled: Arc<Compiled>,
}

/// A policy ready to evaluate: its whole condition (scope and clauses as one expression), built
/// once. Cedar's authorizer builds it again at every evaluation, and evaluates partially (with
/// residuals) even when everything is known; that was most of a decision's time.
#[derive(Debug)]
struct Compiled {
    id: String,
    forbid: bool,
    condition: CoreExpr,
    /// The policy's slots: empty, as templates are refused.
    slots: SlotEnv,
}

fn validator() -> Result<&'static Validator, PolicyError> {
    static VALIDATOR: OnceLock<Result<Validator, PolicyError>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| crate::schema::schema().map(|s| Validator::new(s.clone())))
        .as_ref()
        .map_err(Clone::clone)
}

impl PolicyDoc {
    /// Parses `text` as the one policy of document `id` and validates it against the schema.
    pub fn parse(id: &str, text: &str) -> Result<Self, PolicyError> {
        let id = PolicyId::new(id)?;
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { id: id.0, len: text.len(), max: MAX_POLICY_BYTES });
        }
        let parse_err =
            |e: &dyn fmt::Display| PolicyError::Parse { id: id.0.clone(), message: e.to_string() };
        // Counted first, so that two policies in one text get a clear answer, not a parse error.
        let set: PolicySet = text.parse().map_err(|e: cedar_policy::ParseErrors| parse_err(&e))?;
        let count = set.policies().count() + set.templates().count();
        if count != 1 {
            return Err(PolicyError::NotOne { id: id.0, count });
        }
        if set.templates().count() > 0 {
            return Err(PolicyError::Template(id.0));
        }
        let policy =
            Policy::parse(Some(cedar_policy::PolicyId::new(id.as_str())), text).map_err(|e| parse_err(&e))?;
        let mut one = PolicySet::new();
        one.add(policy.clone()).map_err(|e| PolicyError::Internal(e.to_string()))?;
        let result = validator()?.validate(&one, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors = result.validation_errors().map(ToString::to_string).collect();
            return Err(PolicyError::Invalid { id: id.0, errors });
        }
        let core = one
            .as_ref()
            .policies()
            .next()
            .ok_or_else(|| PolicyError::Internal(format!("policy `{id}` vanished from its set")))?;
        let compiled = Arc::new(Compiled {
            id: id.0.clone(),
            forbid: core.effect() == cedar_policy::Effect::Forbid,
            condition: core.condition(),
            slots: core.env().clone(),
        });
        Ok(Self { id, text: text.to_owned(), policy, compiled })
    }

    /// Its name.
    pub fn id(&self) -> &PolicyId {
        &self.id
    }

    /// Its text, as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// `permit` or `forbid`.
    pub fn effect(&self) -> &'static str {
        match self.policy.effect() {
            cedar_policy::Effect::Permit => "permit",
            cedar_policy::Effect::Forbid => "forbid",
        }
    }
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allow: bool,
    /// The policies that decided: the `permit`s that allowed, or the `forbid`s that denied. Empty
    /// for a deny means no policy permits.
    pub reasons: Vec<String>,
    /// Policies that could not be evaluated for this request (an error in a policy counts as
    /// "does not apply": it never allows), with why.
    pub errors: Vec<String>,
}

impl Decision {
    fn refused(error: String) -> Self {
        Self { allow: false, reasons: Vec::new(), errors: vec![error] }
    }

    /// For people: why.
    pub fn explanation(&self) -> String {
        let names = || self.reasons.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ");
        match (self.allow, self.reasons.is_empty()) {
            (true, _) => format!("permitted by {}", names()),
            (false, true) => "no policy permits".to_owned(),
            (false, false) => format!("denied by {}", names()),
        }
    }
}

/// The policies of one action, by the exact principal or resource their scope names, else by the
/// guard their conditions give (see [`crate::guard`]).
/// Policies that may apply to the same requests.
type Bucket = Vec<Arc<Compiled>>;

#[derive(Default)]
struct ActionIndex {
    /// Policies with neither an exact principal, an exact resource, nor a guard.
    any: Bucket,
    /// Policies with `principal == Workload::"<id>"`, by SPIFFE ID.
    by_principal: HashMap<String, Bucket>,
    /// Policies with `resource == <Type>::"<name>"` (and any principal), by kind and name.
    by_resource: HashMap<ResourceKind, HashMap<String, Bucket>>,
    /// Guarded by `principal.path == "<path>"`, by path.
    by_principal_path: HashMap<String, Bucket>,
    /// Guarded by the resource's path being a key or under it, by key.
    by_resource_under: HashMap<String, Bucket>,
    /// Guarded by `principal.<fact>.contains("<value>")`, by fact and value.
    by_principal_fact: HashMap<Fact, HashMap<String, Bucket>>,
}

/// A validated set of policy documents, indexed for deciding.
pub struct Policies {
    docs: Vec<PolicyDoc>,
    index: HashMap<Action, ActionIndex>,
    /// Every policy in one set: the reference the index must agree with.
    all: PolicySet,
    /// `Action::"<name>"` uids, built once.
    action_uids: HashMap<Action, cedar_policy::EntityUid>,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies").field("policies", &self.docs.len()).finish_non_exhaustive()
    }
}

fn kind_of(type_name: &str) -> Option<ResourceKind> {
    [ResourceKind::Secret, ResourceKind::DbRole, ResourceKind::Service]
        .into_iter()
        .find(|k| k.entity_type() == type_name)
}

impl Policies {
    /// No policies: every request is denied.
    pub fn empty() -> Result<Self, PolicyError> {
        Self::new(Vec::new())
    }

    /// The set of `docs`, ordered by id; an error if two share an id.
    pub fn new(mut docs: Vec<PolicyDoc>) -> Result<Self, PolicyError> {
        docs.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = docs.windows(2).find(|w| matches!(w, [a, b] if a.id == b.id)) {
            let id = w.first().map(|d| d.id.to_string()).unwrap_or_default();
            return Err(PolicyError::Duplicate(id));
        }
        let mut index: HashMap<Action, ActionIndex> = HashMap::new();
        let mut all = PolicySet::new();
        for doc in &docs {
            all.add(doc.policy.clone()).map_err(|e| PolicyError::Internal(e.to_string()))?;
            let actions: Vec<Action> = match doc.policy.action_constraint() {
                ActionConstraint::Any => Action::ALL.to_vec(),
                ActionConstraint::Eq(a) => a.id().unescaped().parse().into_iter().collect(),
                ActionConstraint::In(list) => {
                    list.iter().filter_map(|a| a.id().unescaped().parse().ok()).collect()
                }
            };
            let principal = match doc.policy.principal_constraint() {
                PrincipalConstraint::Eq(p) if p.type_name().basename() == "Workload" => {
                    Some(p.id().unescaped().to_owned())
                }
                _ => None,
            };
            let resource = match doc.policy.resource_constraint() {
                ResourceConstraint::Eq(r) => {
                    kind_of(r.type_name().basename()).map(|k| (k, r.id().unescaped().to_owned()))
                }
                _ => None,
            };
            let guard = match (&principal, &resource) {
                (None, None) => doc.policy.to_json().ok().and_then(|json| best_guard(&json)),
                _ => None,
            };
            for action in actions {
                let slot = index.entry(action).or_default();
                let set = match (&principal, &resource, &guard) {
                    (Some(p), _, _) => slot.by_principal.entry(p.clone()).or_default(),
                    (None, Some((k, name)), _) => {
                        slot.by_resource.entry(*k).or_default().entry(name.clone()).or_default()
                    }
                    (None, None, Some(Guard::PrincipalPath(path))) => {
                        slot.by_principal_path.entry(path.clone()).or_default()
                    }
                    (None, None, Some(Guard::ResourceUnder(key))) => {
                        slot.by_resource_under.entry(key.clone()).or_default()
                    }
                    (None, None, Some(Guard::PrincipalHas(fact, value))) => {
                        slot.by_principal_fact.entry(*fact).or_default().entry(value.clone()).or_default()
                    }
                    (None, None, None) => &mut slot.any,
                };
                set.push(doc.compiled.clone());
            }
        }
        let mut action_uids = HashMap::new();
        for a in Action::ALL {
            action_uids.insert(a, uid("Action", a.as_str())?);
        }
        Ok(Self { docs, index, all, action_uids })
    }

    /// The documents, ordered by id.
    pub fn docs(&self) -> &[PolicyDoc] {
        &self.docs
    }

    /// Decides `req`, looking its principal (and a service resource) up in `workloads`.
    pub fn decide(&self, req: &AccessRequest, workloads: &Workloads) -> Decision {
        // The principal is looked up once: both the index and the evaluation need it.
        let principal = workloads.get(&req.principal);
        match self.candidates(req, principal).and_then(|sets| self.evaluate(req, principal, workloads, &sets))
        {
            Ok(d) => d,
            Err(e) => Decision::refused(e.to_string()),
        }
    }

    /// [`Policies::decide`] without the index: every policy evaluated for the request, as Cedar
    /// alone would. The same answer, slower; the reference for tests and benchmarks.
    pub fn decide_unindexed(&self, req: &AccessRequest, workloads: &Workloads) -> Decision {
        match req.check().map_err(PolicyError::BadRequest).and_then(|()| self.authorize(req, workloads)) {
            Ok(d) => d,
            Err(e) => Decision::refused(e.to_string()),
        }
    }

    /// Cedar's own authorizer over every policy: the reference [`Policies::decide`] must agree with.
    fn authorize(&self, req: &AccessRequest, workloads: &Workloads) -> Result<Decision, PolicyError> {
        if self.all.is_empty() {
            return Ok(Decision { allow: false, reasons: Vec::new(), errors: Vec::new() });
        }
        let (request, entities) = self.request(req, workloads.get(&req.principal), workloads)?;
        let response = Authorizer::new().is_authorized(&request.into(), &self.all, &entities.into());
        let mut reasons: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        reasons.sort();
        let errors = response.diagnostics().errors().map(ToString::to_string).collect();
        Ok(Decision { allow: response.decision() == cedar_policy::Decision::Allow, reasons, errors })
    }

    /// The sets of policies that may apply to `req`.
    fn candidates(
        &self,
        req: &AccessRequest,
        principal: Option<&Workload>,
    ) -> Result<Vec<&Bucket>, PolicyError> {
        req.check().map_err(PolicyError::BadRequest)?;
        let Some(index) = self.index.get(&req.action) else { return Ok(Vec::new()) };
        let mut sets: Vec<&Bucket> = [
            Some(&index.any),
            index.by_principal.get(req.principal.as_str()),
            index.by_resource.get(&req.resource.kind()).and_then(|m| m.get(req.resource.name())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let principal_path = path_attr(&req.principal);
        sets.extend(index.by_principal_path.get(principal_path));
        if !index.by_resource_under.is_empty() {
            let resource_path = match &req.resource {
                Resource::Secret(path) => Some(path.as_str()),
                Resource::Service(id) => Some(path_attr(id)),
                // A database role has no `path`: no policy guarded by one applies to it.
                Resource::DbRole(_) => None,
            };
            for key in resource_path.into_iter().flat_map(path_keys) {
                sets.extend(index.by_resource_under.get(key));
            }
        }
        if !index.by_principal_fact.is_empty() {
            let facts = principal.map(|w| &w.facts);
            for (fact, by_value) in &index.by_principal_fact {
                let mut find = |value: &str| sets.extend(by_value.get(value));
                match (fact, facts) {
                    (Fact::Segments, _) => segments_attr(&req.principal).for_each(&mut find),
                    (_, None) => {}
                    (Fact::Owners, Some(f)) => f.owners.iter().for_each(|v| find(v)),
                    (Fact::K8sNamespaces, Some(f)) => f.k8s_namespaces.iter().for_each(|v| find(v)),
                    (Fact::K8sServiceAccounts, Some(f)) => {
                        f.k8s_service_accounts.iter().for_each(|v| find(v))
                    }
                    (Fact::NodeGroups, Some(f)) => f.node_groups.iter().for_each(|v| find(v)),
                }
            }
        }
        sets.retain(|s| !s.is_empty());
        Ok(sets)
    }

    /// The Cedar request and entities of `req`; `principal` is the request's principal if an entry
    /// names it.
    fn request(
        &self,
        req: &AccessRequest,
        principal: Option<&Workload>,
        workloads: &Workloads,
    ) -> Result<(CoreRequest, CoreEntities), PolicyError> {
        let principal = match principal {
            Some(w) => w.entity().clone(),
            None => spiffe_entity("Workload", &req.principal, &Facts::default())?,
        };
        let resource = resource_entity(&req.resource, workloads)?;
        let action = self
            .action_uids
            .get(&req.action)
            .ok_or_else(|| PolicyError::Internal(format!("no uid for action `{}`", req.action)))?;
        // Not checked against the schema here: `AccessRequest::check` did (the action applies to
        // the resource's kind), and the entities are built to the schema.
        let request = CoreRequest::new_unchecked(
            EntityUIDEntry::known(principal.uid().clone(), None),
            EntityUIDEntry::known(action.as_ref().clone(), None),
            EntityUIDEntry::known(resource.uid().clone(), None),
            Some(CoreContext::empty()),
        );
        // vouch's entities have no parents, so there is no transitive closure to compute: the
        // public constructor would compute one per decision (a tenth of its time).
        let entities = CoreEntities::new()
            .add_entities(
                [principal, resource],
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                Extensions::none(),
            )
            .map_err(|e| PolicyError::Internal(e.to_string()))?;
        Ok((request, entities))
    }

    /// Evaluates the `candidates` for `req` as Cedar's authorizer would (deny wins; no permit is
    /// a deny; a policy that errors does not apply), with one evaluator for all of them.
    fn evaluate(
        &self,
        req: &AccessRequest,
        principal: Option<&Workload>,
        workloads: &Workloads,
        candidates: &[&Bucket],
    ) -> Result<Decision, PolicyError> {
        if candidates.is_empty() {
            return Ok(Decision { allow: false, reasons: Vec::new(), errors: Vec::new() });
        }
        let (request, entities) = self.request(req, principal, workloads)?;
        let evaluator = Evaluator::new(request, &entities, Extensions::none());
        let (mut permits, mut forbids, mut errors) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
        for policy in candidates.iter().flat_map(|b| b.iter()) {
            match evaluator.interpret(&policy.condition, &policy.slots).map(|v| v.value) {
                Ok(ValueKind::Lit(Literal::Bool(true))) if policy.forbid => {
                    forbids.insert(policy.id.as_str());
                }
                Ok(ValueKind::Lit(Literal::Bool(true))) => {
                    permits.insert(policy.id.as_str());
                }
                Ok(ValueKind::Lit(Literal::Bool(false))) => {}
                // Validation makes every condition a boolean; anything else is an error, as in Cedar.
                Ok(other) => errors.push(format!(
                    "error while evaluating policy `{}`: the condition is not a boolean: {other:?}",
                    policy.id
                )),
                Err(e) => errors.push(format!("error while evaluating policy `{}`: {e}", policy.id)),
            }
        }
        let owned = |set: BTreeSet<&str>| set.into_iter().map(str::to_owned).collect();
        Ok(if !forbids.is_empty() {
            Decision { allow: false, reasons: owned(forbids), errors }
        } else {
            Decision { allow: !permits.is_empty(), reasons: owned(permits), errors }
        })
    }
}

/// Policies and the workloads they decide about, together: the decision function other parts
/// call (`engine.decide(&request)`).
#[derive(Debug, Clone)]
pub struct Engine {
    /// The policies.
    pub policies: Arc<Policies>,
    /// The workloads, from registration entries.
    pub workloads: Arc<Workloads>,
}

impl Engine {
    /// An engine over `policies` and `workloads`.
    pub fn new(policies: Arc<Policies>, workloads: Arc<Workloads>) -> Self {
        Self { policies, workloads }
    }

    /// Decides `req`.
    pub fn decide(&self, req: &AccessRequest) -> Decision {
        self.policies.decide(req, &self.workloads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_core::grant::{Resource, SecretPath};
    use vouch_core::{Entry, EntryId, EntrySpec, SpiffeId, TrustDomain};

    fn entry(id: &str, path: &str, parent: &str, selectors: &[&str], owner: &str) -> Entry {
        let spec: EntrySpec = serde_json::from_value(serde_json::json!({
            "spiffe_id": format!("spiffe://example.org{path}"),
            "parent_id": format!("spiffe://example.org{parent}"),
            "selectors": selectors,
            "owner": owner,
        }))
        .unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        Entry::create(spec, EntryId::new(id).unwrap(), &td, 1000).unwrap()
    }

    fn workloads() -> Workloads {
        Workloads::from_entries(&[
            entry("1", "/web", "/agent/a", &["k8s:ns:prod", "k8s:sa:web"], "team-web"),
            entry("2", "/payments", "/vouch/group/pci", &["unix:uid:1"], "team-pay"),
        ])
        .unwrap()
    }

    fn policies(docs: &[(&str, &str)]) -> Policies {
        Policies::new(docs.iter().map(|(id, text)| PolicyDoc::parse(id, text).unwrap()).collect()).unwrap()
    }

    fn read(who: &str, path: &str) -> AccessRequest {
        AccessRequest {
            principal: SpiffeId::parse(&format!("spiffe://example.org/{who}")).unwrap(),
            action: Action::Read,
            resource: Resource::Secret(SecretPath::parse(path).unwrap()),
        }
    }

    const OWN_PATH: &str = r#"permit(principal, action == Action::"read", resource is Secret)
        when { resource.dirs.contains(principal.path) };"#;

    /// One row of a decision table: policies, request, expected allow, expected reasons.
    type Case<'a> = (&'a [(&'a str, &'a str)], AccessRequest, bool, &'a [&'a str]);

    #[test]
    fn decisions_follow_deny_wins_and_default_deny() {
        let ws = workloads();
        let cases: &[Case<'_>] = &[
            (&[], read("web", "web/db"), false, &[]),
            (&[("own-path", OWN_PATH)], read("web", "web/db"), true, &["own-path"]),
            (&[("own-path", OWN_PATH)], read("web", "payments/db"), false, &[]),
            // "under" its path: the directory itself is not a secret under it.
            (&[("own-path", OWN_PATH)], read("web", "web"), false, &[]),
            (
                &[
                    ("own-path", OWN_PATH),
                    (
                        "no-prod-db",
                        r#"forbid(principal, action, resource == Secret::"web/db") when { principal.k8s_namespaces.contains("prod") };"#,
                    ),
                ],
                read("web", "web/db"),
                false,
                &["no-prod-db"],
            ),
            (
                &[(
                    "exact",
                    r#"permit(principal == Workload::"spiffe://example.org/payments", action == Action::"read", resource == Secret::"shared/key");"#,
                )],
                read("payments", "shared/key"),
                true,
                &["exact"],
            ),
            (
                &[(
                    "exact",
                    r#"permit(principal == Workload::"spiffe://example.org/payments", action == Action::"read", resource == Secret::"shared/key");"#,
                )],
                read("web", "shared/key"),
                false,
                &[],
            ),
            (
                &[(
                    "pci",
                    r#"permit(principal, action in [Action::"read", Action::"write"], resource) when { principal.node_groups.contains("spiffe://example.org/vouch/group/pci") && resource.path like "pci/*" };"#,
                )],
                read("payments", "pci/card-key"),
                true,
                &["pci"],
            ),
            (
                &[(
                    "owners",
                    r#"permit(principal, action, resource is Secret) when { principal.owners.contains("team-web") };"#,
                )],
                read("web", "anything"),
                true,
                &["owners"],
            ),
            // An unregistered principal has only its SPIFFE ID's facts.
            (
                &[(
                    "registered-only",
                    r#"permit(principal, action, resource is Secret) when { principal.registered };"#,
                )],
                read("stranger", "x"),
                false,
                &[],
            ),
        ];
        for (i, (docs, req, allow, reasons)) in cases.iter().enumerate() {
            let d = policies(docs).decide(req, &ws);
            assert_eq!(d.allow, *allow, "case {i}: {d:?}");
            assert_eq!(d.reasons, *reasons, "case {i}: {d:?}");
            assert!(d.errors.is_empty(), "case {i}: {d:?}");
        }
    }

    #[test]
    fn explanations_name_the_deciding_policies() {
        let ws = workloads();
        let none = policies(&[]).decide(&read("web", "a/b"), &ws);
        assert_eq!(none.explanation(), "no policy permits");
        let allowed = policies(&[("own-path", OWN_PATH)]).decide(&read("web", "web/x"), &ws);
        assert_eq!(allowed.explanation(), "permitted by `own-path`");
    }

    #[test]
    fn services_and_db_roles_are_resources() {
        let ws = workloads();
        let p = policies(&[
            (
                "to-pay",
                r#"permit(principal, action == Action::"connect", resource is Service) when { resource.owners.contains("team-pay") && principal.k8s_service_accounts.contains("web") };"#,
            ),
            (
                "ro",
                r#"permit(principal, action == Action::"issue", resource == DbRole::"orders/ro") when { principal.path == "payments" };"#,
            ),
        ]);
        let web = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let pay = SpiffeId::parse("spiffe://example.org/payments").unwrap();
        let connect = AccessRequest {
            principal: web.clone(),
            action: Action::Connect,
            resource: Resource::Service(pay.clone()),
        };
        assert!(p.decide(&connect, &ws).allow);
        let back = AccessRequest {
            principal: pay.clone(),
            action: Action::Connect,
            resource: Resource::Service(web),
        };
        assert!(!p.decide(&back, &ws).allow);
        let issue = AccessRequest {
            principal: pay,
            action: Action::Issue,
            resource: Resource::parse("db_role", "orders/ro").unwrap(),
        };
        assert_eq!(p.decide(&issue, &ws).reasons, ["ro"]);
        // An action on a resource it does not apply to is an error, never an allow.
        let wrong = AccessRequest { action: Action::Read, ..connect };
        let d = p.decide(&wrong, &ws);
        assert!(!d.allow && d.errors[0].contains("does not apply"), "{d:?}");
    }

    #[test]
    fn bad_policies_are_refused_with_reasons() {
        let cases: &[(&str, &str, &str)] = &[
            ("p", "permit(principal, action, resource", "does not parse"),
            (
                "p",
                "permit(principal, action, resource) when { principal.colour == \"red\" };",
                "fails validation",
            ),
            ("p", "permit(principal, action == Action::\"fly\", resource);", "fails validation"),
            ("p", "permit(principal, action, resource is Bucket);", "fails validation"),
            ("p", "permit(principal, action, resource); forbid(principal, action, resource);", "holds 2"),
            ("p", "", "holds 0"),
            ("p", "permit(principal == ?principal, action, resource);", "template"),
            ("bad id!", "permit(principal, action, resource);", "policy id `bad id!`"),
        ];
        for (id, text, want) in cases {
            let err = PolicyDoc::parse(id, text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let big = format!(
            "permit(principal, action, resource) when {{ principal.path == \"{}\" }};",
            "a".repeat(MAX_POLICY_BYTES)
        );
        assert!(PolicyDoc::parse("big", &big).unwrap_err().to_string().contains("at most 16384"));
        let a = PolicyDoc::parse("a", OWN_PATH).unwrap();
        assert!(matches!(Policies::new(vec![a.clone(), a]), Err(PolicyError::Duplicate(id)) if id == "a"));
    }

    #[test]
    fn the_index_never_hides_a_policy_that_applies() {
        // The same policies, evaluated through the index and as one set, agree on every request.
        let docs = [
            (
                "a",
                r#"permit(principal == Workload::"spiffe://example.org/web", action, resource is Secret);"#,
            ),
            ("b", r#"forbid(principal, action == Action::"read", resource == Secret::"web/secret");"#),
            ("c", OWN_PATH),
            (
                "d",
                r#"permit(principal, action in [Action::"write"], resource) when { principal.path == "payments" };"#,
            ),
            (
                "e",
                r#"forbid(principal == Workload::"spiffe://example.org/payments", action, resource == Secret::"z");"#,
            ),
        ];
        let guarded = [
            (
                "f",
                r#"permit(principal, action, resource is Secret) when { principal.k8s_namespaces.contains("prod") && resource.path like "web/*" };"#,
            ),
            (
                "g",
                r#"forbid(principal, action, resource is Secret) when { resource.path like "pci/keys*" };"#,
            ),
            (
                "h",
                r#"permit(principal, action == Action::"read", resource) when { principal.owners.contains("team-pay") };"#,
            ),
            (
                "i",
                r#"permit(principal, action, resource is Secret) when { "payments" == principal.path && resource.dirs.contains("pci") };"#,
            ),
            (
                "j",
                r#"permit(principal, action, resource is Secret) when { principal.segments.contains("web") } when { resource.path == "z" };"#,
            ),
            (
                "k",
                r#"permit(principal, action, resource) when { principal.node_groups.contains("spiffe://example.org/vouch/group/pci") };"#,
            ),
            (
                "l",
                r#"forbid(principal, action, resource is Secret) when { principal.k8s_service_accounts.contains("web") && resource.path like "payments/*" };"#,
            ),
            (
                "m",
                r#"permit(principal, action == Action::"connect", resource is Service) when { resource.path like "pay*" };"#,
            ),
            (
                "n",
                r#"permit(principal, action == Action::"connect", resource is Service) when { resource.path == "payments" };"#,
            ),
        ];
        let docs: Vec<_> = docs.into_iter().chain(guarded).collect();
        let indexed = policies(&docs);
        // Only `c` has neither an exact scope nor a guard among the policies of `read`.
        let unguarded: Vec<String> = indexed.index[&Action::Read].any.iter().map(|p| p.id.clone()).collect();
        assert_eq!(unguarded, ["c"]);
        let ws = workloads();
        for who in ["web", "payments", "nobody"] {
            for to in ["web", "payments", "nobody"] {
                let req = AccessRequest {
                    principal: SpiffeId::parse(&format!("spiffe://example.org/{who}")).unwrap(),
                    action: Action::Connect,
                    resource: Resource::Service(
                        SpiffeId::parse(&format!("spiffe://example.org/{to}")).unwrap(),
                    ),
                };
                assert_eq!(indexed.decide(&req, &ws), indexed.decide_unindexed(&req, &ws), "{who} → {to}");
            }
            for path in
                ["web/secret", "web/x", "payments/y", "z", "pci/keys/a", "pci/keystore", "pci/other", "pci"]
            {
                for action in [Action::Read, Action::Write] {
                    let req = AccessRequest { action, ..read(who, path) };
                    assert_eq!(
                        indexed.decide(&req, &ws),
                        indexed.decide_unindexed(&req, &ws),
                        "{who} {path} {action}"
                    );
                }
            }
        }
    }
}
