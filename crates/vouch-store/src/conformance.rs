//! The contract of [`Store`], as executable checks. Every implementation runs [`run`] on a fresh,
//! empty store in its own tests; a failed check panics with what was expected.

// The conformance suite is a test: it panics to report a broken contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use vouch_core::{
    Entry, EntryId, EntrySpec, Namespace, NodeGroup, NodeGroupSpec, Selector, SpiffeId, TrustDomain,
};

use crate::{
    AgentRecord, AgentRenewal, AuthorityWrite, ChallengeIssue, ChallengeRecord, ChallengeUse, EntryFilter,
    JoinTokenRecord, NewSecretVersion, SecretRead, SecretRecord, Store, StoreError, StoredAuthority,
    TokenUse, VersionChange,
};

fn entry(id: &str, path: &str, parent: &str, selectors: &[&str]) -> Entry {
    let td = TrustDomain::new("example.org").expect("valid trust domain");
    let spec = EntrySpec {
        id: None,
        spiffe_id: td.id_with_path(path).expect("valid path"),
        parent_id: td.id_with_path(parent).expect("valid parent"),
        selectors: selectors.iter().map(|s| Selector::parse(s).expect("valid selector")).collect(),
        x509_svid_ttl: Some(600),
        jwt_svid_ttl: None,
        dns_names: vec![],
        x509_common_name: None,
        hint: "h".into(),
        admin: false,
        federates_with: vec![],
        expires_at: None,
        owner: "team-a".into(),
        purpose: "tests".into(),
        namespace: None,
        admin_namespaces: vec![],
    };
    Entry::create(spec, EntryId::new(id).expect("valid id"), &td, 1000).expect("valid entry")
}

/// Runs every check against `store`, which must be empty.
pub async fn run(store: Arc<dyn Store>) {
    entries_round_trip(&*store).await;
    namespaces(&*store).await;
    batch_is_atomic(&*store).await;
    updates_use_revisions(&*store).await;
    join_tokens_are_single_use(store.clone()).await;
    x509pop_challenges_are_single_use(store.clone()).await;
    x509pop_challenges_are_bounded(&*store).await;
    one_certificate_cannot_fill_the_challenge_bound(&*store).await;
    exchanged_tokens_are_accepted_once(store.clone()).await;
    authority_state(&*store).await;
    agents(&*store).await;
    bans_win_races(store.clone()).await;
    policies(store.clone()).await;
    db_leases(store.clone()).await;
    node_groups(&*store).await;
    federation(&*store).await;
    secrets(store.clone()).await;
    audit_log(store.clone()).await;
    store.ping().await.expect("ping");
}

async fn entries_round_trip(store: &dyn Store) {
    let a = entry("a", "/web", "/agent/1", &["unix:uid:1000"]);
    let mut b = entry("b", "/db", "/agent/2", &["unix:uid:1000", "docker:label:app:db"]);
    b.x509_common_name = Some(vouch_core::CommonName::new("db_user").unwrap());
    store.create_entries(&[a.clone(), b.clone()]).await.expect("create");
    assert_eq!(
        store.get_entry(&b.id).await.expect("get"),
        Some(b.clone()),
        "an entry with an X509 common name reads back with it"
    );
    assert_eq!(store.get_entry(&a.id).await.expect("get"), Some(a.clone()), "an entry reads back unchanged");
    assert_eq!(store.get_entry(&EntryId::new("zz").unwrap()).await.expect("get"), None);
    assert_eq!(
        store.list_entries(&EntryFilter::default()).await.expect("list"),
        vec![a.clone(), b.clone()],
        "ordered by id"
    );
    let by_parent = EntryFilter { parent_id: Some(b.parent_id.clone()), ..Default::default() };
    assert_eq!(store.list_entries(&by_parent).await.expect("list"), vec![b.clone()]);
    let by_id = EntryFilter { spiffe_id: Some(a.spiffe_id.clone()), ..Default::default() };
    assert_eq!(store.list_entries(&by_id).await.expect("list"), vec![a.clone()]);
    let by_sel =
        EntryFilter { selector: Some(Selector::parse("docker:label:app:db").unwrap()), ..Default::default() };
    assert_eq!(store.list_entries(&by_sel).await.expect("list"), vec![b.clone()]);
    let none = EntryFilter {
        spiffe_id: Some(SpiffeId::parse("spiffe://example.org/nope").unwrap()),
        ..Default::default()
    };
    assert!(store.list_entries(&none).await.expect("list").is_empty());
    assert!(
        matches!(store.create_entries(std::slice::from_ref(&a)).await, Err(StoreError::EntryExists(id)) if id == "a")
    );
    assert_eq!(store.delete_entry(&a.id).await.expect("delete"), a);
    assert!(matches!(store.delete_entry(&a.id).await, Err(StoreError::EntryNotFound(_))));
    store.delete_entry(&b.id).await.expect("delete");
    assert!(store.list_entries(&EntryFilter::default()).await.expect("list").is_empty());
}

fn ns(name: &str) -> Namespace {
    Namespace::new(name).unwrap()
}

/// Entries keep their namespace and admin namespaces; listings filter by namespace, also after
/// an entry moves.
async fn namespaces(store: &dyn Store) {
    let td = TrustDomain::new("example.org").unwrap();
    let plain = entry("n1", "/n1", "/agent/1", &["unix:uid:1"]);
    let mut team = entry("n2", "/n2", "/agent/1", &["unix:uid:2"]);
    team.namespace = ns("team-a");
    let mut admin = entry("n3", "/admin/a", "/agent/1", &["unix:uid:3"]);
    admin.admin = true;
    admin.admin_namespaces = vec![ns("team-a"), ns("team-b")];
    store.create_entries(&[plain.clone(), team.clone(), admin.clone()]).await.expect("create");
    assert_eq!(store.get_entry(&team.id).await.unwrap(), Some(team.clone()));
    assert_eq!(store.get_entry(&admin.id).await.unwrap(), Some(admin.clone()), "admin namespaces kept");
    let of = |n: &str| EntryFilter { namespace: Some(ns(n)), ..Default::default() };
    assert_eq!(store.list_entries(&of("team-a")).await.unwrap(), vec![team.clone()]);
    assert_eq!(store.list_entries(&of("default")).await.unwrap(), vec![plain.clone(), admin.clone()]);
    let both = EntryFilter { parent_id: Some(team.parent_id.clone()), ..of("team-a") };
    assert_eq!(store.list_entries(&both).await.unwrap(), vec![team.clone()], "with another filter");
    let mut spec = team.spec();
    spec.namespace = Some(ns("team-b"));
    let moved = team.updated(spec, &td, 2000).unwrap();
    store.update_entry(&moved).await.expect("update");
    assert!(store.list_entries(&of("team-a")).await.unwrap().is_empty(), "the column follows a move");
    assert_eq!(store.list_entries(&of("team-b")).await.unwrap(), vec![moved]);
    for e in [&plain, &team, &admin] {
        store.delete_entry(&e.id).await.expect("delete");
    }
}

async fn batch_is_atomic(store: &dyn Store) {
    let existing = entry("x", "/x", "/agent/1", &["unix:uid:1"]);
    store.create_entries(std::slice::from_ref(&existing)).await.expect("create");
    let batch = [entry("y", "/y", "/agent/1", &["unix:uid:2"]), existing.clone()];
    assert!(matches!(store.create_entries(&batch).await, Err(StoreError::EntryExists(_))));
    assert_eq!(
        store.get_entry(&EntryId::new("y").unwrap()).await.expect("get"),
        None,
        "a failed batch creates nothing"
    );
    store.delete_entry(&existing.id).await.expect("delete");
}

async fn updates_use_revisions(store: &dyn Store) {
    let td = TrustDomain::new("example.org").unwrap();
    let e = entry("u", "/u", "/agent/1", &["unix:uid:1"]);
    store.create_entries(std::slice::from_ref(&e)).await.expect("create");
    let mut spec: EntrySpec = serde_json::from_value(serde_json::json!({
        "spiffe_id": "spiffe://example.org/u2", "parent_id": "spiffe://example.org/agent/9", "selectors": ["unix:uid:2"]
    }))
    .unwrap();
    spec.hint = "new".into();
    spec.x509_common_name = Some(vouch_core::CommonName::new("app user").unwrap());
    let e1 = e.updated(spec.clone(), &td, 2000).unwrap();
    store.update_entry(&e1).await.expect("update");
    assert_eq!(store.get_entry(&e.id).await.unwrap(), Some(e1.clone()));
    let by_parent = EntryFilter { parent_id: Some(e1.parent_id.clone()), ..Default::default() };
    assert_eq!(
        store.list_entries(&by_parent).await.unwrap(),
        vec![e1.clone()],
        "indexed columns follow updates"
    );
    // A second update based on the old revision loses.
    let stale = e.updated(spec.clone(), &td, 2001).unwrap();
    assert!(matches!(
        store.update_entry(&stale).await,
        Err(StoreError::RevisionConflict { expected: 0, .. })
    ));
    let missing = entry("missing", "/m", "/agent/1", &["unix:uid:1"]).updated(spec, &td, 2000).unwrap();
    assert!(matches!(store.update_entry(&missing).await, Err(StoreError::EntryNotFound(_))));
    store.delete_entry(&e.id).await.unwrap();
}

async fn join_tokens_are_single_use(store: Arc<dyn Store>) {
    let rec = |hash: &str, expires_at| JoinTokenRecord {
        hash: hash.into(),
        created_at: 100,
        expires_at,
        agent_id: Some(SpiffeId::parse("spiffe://example.org/agent/join/n1").unwrap()),
        used_at: None,
        labels: [("env".to_owned(), "prod".to_owned()), ("rack".to_owned(), "r1:a".to_owned())].into(),
    };
    store.create_join_token(&rec("h1", 1000)).await.expect("create token");
    assert!(matches!(store.create_join_token(&rec("h1", 1000)).await, Err(StoreError::TokenExists)));
    store.create_join_token(&rec("h2", 500)).await.expect("create token");
    // Refusals are decided without a write (a flood of bogus tokens takes no write lock).
    let writes = store.write_transactions();
    assert_eq!(store.consume_join_token("nope", 200).await.unwrap(), TokenUse::Unknown);
    assert_eq!(store.consume_join_token("h2", 500).await.unwrap(), TokenUse::Expired);
    assert_eq!(store.write_transactions(), writes, "refused tokens must not write");
    match store.consume_join_token("h1", 200).await.unwrap() {
        TokenUse::Consumed(r) => assert_eq!(r, JoinTokenRecord { used_at: Some(200), ..rec("h1", 1000) }),
        other => panic!("expected consumption, got {other:?}"),
    }
    assert!(store.write_transactions() > writes, "a consumed token is a counted write");
    let writes = store.write_transactions();
    assert_eq!(store.consume_join_token("h1", 201).await.unwrap(), TokenUse::AlreadyUsed);
    assert_eq!(store.write_transactions(), writes, "a used token is refused without a write");

    // A token without labels reads back without labels.
    store
        .create_join_token(&JoinTokenRecord { labels: Default::default(), ..rec("bare", 1000) })
        .await
        .unwrap();
    match store.consume_join_token("bare", 200).await.unwrap() {
        TokenUse::Consumed(r) => assert!(r.labels.is_empty()),
        other => panic!("expected consumption, got {other:?}"),
    }

    // Racing consumers: exactly one wins.
    store.create_join_token(&rec("race", 1000)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.consume_join_token("race", 300).await.unwrap() }));
    }
    let mut wins = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), TokenUse::Consumed(_)) {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "a join token is consumed exactly once under concurrency");
}

async fn exchanged_tokens_are_accepted_once(store: Arc<dyn Store>) {
    assert!(store.record_exchanged_token("t1", 200, 100).await.unwrap(), "a new token is recorded");
    assert!(!store.record_exchanged_token("t1", 200, 150).await.unwrap(), "a replay is refused");
    assert!(!store.record_exchanged_token("t1", 900, 199).await.unwrap(), "until its expiry");
    // At its expiry the key is purged: an expired token is refused by its `exp` anyway.
    assert!(store.record_exchanged_token("t1", 300, 200).await.unwrap(), "purged at expiry");
    assert!(store.record_exchanged_token("t2", 300, 200).await.unwrap(), "another key is its own");

    // Racing exchanges of one token (replicas answering at once): exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.record_exchanged_token("race", 1000, 250).await.unwrap() }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1, "a subject token is exchanged exactly once under concurrency");

    // A batch: new keys, a known one and a key given twice, in order.
    let batch = [
        ("b1".to_owned(), 1000),
        ("race".to_owned(), 1000),
        ("b2".to_owned(), 1000),
        ("b1".to_owned(), 1000),
    ];
    assert_eq!(store.record_exchanged_tokens(&batch, 260).await.unwrap(), [true, false, true, false]);
    assert!(store.record_exchanged_tokens(&[], 260).await.unwrap().is_empty());
}

fn challenge(hash: &str, expires_at: i64) -> ChallengeRecord {
    ChallengeRecord { nonce_hash: hash.into(), fingerprint: format!("fp-{hash}"), expires_at }
}

async fn x509pop_challenges_are_single_use(store: Arc<dyn Store>) {
    let issued = |hash: &str| ChallengeUse::Consumed { fingerprint: format!("fp-{hash}") };
    assert_eq!(store.issue_challenge(&challenge("c1", 160), 100, 10).await.unwrap(), ChallengeIssue::Issued);
    assert_eq!(store.issue_challenge(&challenge("c2", 160), 100, 10).await.unwrap(), ChallengeIssue::Issued);
    // Unknown nonces (guesses, replays) are refused without a write.
    let writes = store.write_transactions();
    assert_eq!(store.consume_challenge("nope", 110).await.unwrap(), ChallengeUse::Unknown);
    assert_eq!(store.write_transactions(), writes, "an unknown challenge must not write");
    assert_eq!(store.consume_challenge("c1", 110).await.unwrap(), issued("c1"), "consumed once");
    assert_eq!(store.consume_challenge("c1", 110).await.unwrap(), ChallengeUse::Unknown, "never twice");
    // Expired (at its expiry second): refused, and gone.
    assert_eq!(store.consume_challenge("c2", 160).await.unwrap(), ChallengeUse::Expired);
    assert_eq!(store.consume_challenge("c2", 120).await.unwrap(), ChallengeUse::Unknown, "purged");

    // Racing consumers (replicas answering one challenge at once): exactly one wins.
    store.issue_challenge(&challenge("race", 1000), 200, 10).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.consume_challenge("race", 300).await.unwrap() }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            ChallengeUse::Consumed { fingerprint } => {
                assert_eq!(fingerprint, "fp-race");
                wins += 1;
            }
            ChallengeUse::Unknown => {}
            ChallengeUse::Expired => panic!("an unexpired challenge was refused as expired"),
        }
    }
    assert_eq!(wins, 1, "a challenge is consumed exactly once under concurrency");
}

/// Asking for a challenge needs only a node certificate that chains to a configured CA, and a
/// certificate is public (it is shown in every TLS handshake the node makes): a caller without the
/// node's key may ask for challenges it can never answer. Those must not fill the bound shared by
/// every node: a certificate has at most [`crate::MAX_CHALLENGES_PER_CERTIFICATE`] outstanding, a
/// new one taking the place of an older one, so other nodes still get theirs.
async fn one_certificate_cannot_fill_the_challenge_bound(store: &dyn Store) {
    // Whatever the earlier checks left is expired by now = 10_000.
    let now = 10_000;
    let per = crate::MAX_CHALLENGES_PER_CERTIFICATE;
    let limit = per + 2;
    let flood = |i: u32| ChallengeRecord {
        nonce_hash: format!("flood{i}"),
        fingerprint: "fp-public".into(),
        expires_at: now + 60,
    };
    for i in 0..limit * 3 {
        assert_eq!(
            store.issue_challenge(&flood(i), now, limit).await.unwrap(),
            ChallengeIssue::Issued,
            "challenge {i} for one certificate: the newest request of a certificate is always stored"
        );
    }
    assert_eq!(
        store.issue_challenge(&challenge("other-node", now + 60), now, limit).await.unwrap(),
        ChallengeIssue::Issued,
        "challenges for one certificate filled the bound of every node"
    );
    // The newest request of the certificate can be answered; at most `per` of its are outstanding.
    let mut answerable = 0;
    for i in (0..limit * 3).rev() {
        if let ChallengeUse::Consumed { fingerprint } =
            store.consume_challenge(&format!("flood{i}"), now).await.unwrap()
        {
            assert_eq!(fingerprint, "fp-public");
            if answerable == 0 {
                assert_eq!(i, limit * 3 - 1, "the newest challenge of a certificate is kept");
            }
            answerable += 1;
        }
    }
    assert_eq!(answerable, per, "outstanding challenges of one certificate");
    assert!(matches!(
        store.consume_challenge("other-node", now).await.unwrap(),
        ChallengeUse::Consumed { .. }
    ));
}

async fn x509pop_challenges_are_bounded(store: &dyn Store) {
    // Whatever the earlier checks left is expired by now = 5000.
    let now = 5000;
    for i in 0..3 {
        let c = challenge(&format!("b{i}"), now + 60);
        assert_eq!(store.issue_challenge(&c, now, 3).await.unwrap(), ChallengeIssue::Issued);
    }
    let over = challenge("b3", now + 60);
    assert_eq!(store.issue_challenge(&over, now, 3).await.unwrap(), ChallengeIssue::Full { limit: 3 });
    assert_eq!(
        store.consume_challenge("b3", now).await.unwrap(),
        ChallengeUse::Unknown,
        "a refused one is not stored"
    );
    // Consuming one makes room for one.
    assert!(matches!(store.consume_challenge("b0", now).await.unwrap(), ChallengeUse::Consumed { .. }));
    assert_eq!(store.issue_challenge(&over, now, 3).await.unwrap(), ChallengeIssue::Issued);
    assert_eq!(
        store.issue_challenge(&challenge("b4", now + 60), now, 3).await.unwrap(),
        ChallengeIssue::Full { limit: 3 }
    );
    // Once they expire, they are purged to make room, and stay refused.
    let later = now + 60;
    assert_eq!(
        store.issue_challenge(&challenge("b5", later + 60), later, 3).await.unwrap(),
        ChallengeIssue::Issued
    );
    assert_eq!(store.consume_challenge("b1", later).await.unwrap(), ChallengeUse::Unknown, "purged at issue");
    assert!(matches!(store.consume_challenge("b5", later).await.unwrap(), ChallengeUse::Consumed { .. }));
}

async fn authority_state(store: &dyn Store) {
    assert_eq!(store.load_authority().await.unwrap(), None);
    assert_eq!(store.authority_version().await.unwrap(), None);
    // Replacing a state that does not exist writes nothing.
    assert_eq!(store.write_authority(Some(1), "{}").await.unwrap(), AuthorityWrite::Conflict(None));
    // The first state is created once: a second creation gets the first one back, unchanged.
    assert_eq!(store.write_authority(None, "{\"v\":\"a\"}").await.unwrap(), AuthorityWrite::Written(1));
    let first = StoredAuthority { version: 1, state: "{\"v\":\"a\"}".into() };
    assert_eq!(
        store.write_authority(None, "{\"v\":\"b\"}").await.unwrap(),
        AuthorityWrite::Conflict(Some(first.clone()))
    );
    // A replacement must name the version it replaces; a stale one changes nothing.
    assert_eq!(store.write_authority(Some(1), "{\"v\":\"c\"}").await.unwrap(), AuthorityWrite::Written(2));
    let second = StoredAuthority { version: 2, state: "{\"v\":\"c\"}".into() };
    assert_eq!(
        store.write_authority(Some(1), "{\"v\":\"d\"}").await.unwrap(),
        AuthorityWrite::Conflict(Some(second.clone()))
    );
    assert_eq!(store.load_authority_versioned().await.unwrap(), Some(second));
    assert_eq!(store.authority_version().await.unwrap(), Some(2));
    store.save_authority("{\"v\":1}").await.unwrap();
    store.save_authority("{\"v\":2}").await.unwrap();
    assert_eq!(store.load_authority().await.unwrap().as_deref(), Some("{\"v\":2}"));
    assert_eq!(store.authority_version().await.unwrap(), Some(4));
}

async fn agents(store: &dyn Store) {
    let id = SpiffeId::parse("spiffe://example.org/agent/join_token/n1").unwrap();
    let a = AgentRecord {
        spiffe_id: id.clone(),
        attestation: "join_token".into(),
        selectors: [Selector::parse("join_token:abc").unwrap()].into_iter().collect(),
        created_at: 10,
        last_seen: 10,
        svid_expires_at: 3610,
        banned: false,
        svid_serial: Some("01".into()),
        new_svid_serial: None,
    };
    assert_eq!(store.get_agent(&id).await.unwrap(), None);
    assert!(matches!(store.authenticate_agent(&id, "01").await, Err(StoreError::AgentNotFound(_))));
    assert_eq!(store.attest_agent(&a).await.unwrap(), a);
    assert_eq!(store.get_agent(&id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.authenticate_agent(&id, "01").await.unwrap(), a);
    assert!(matches!(store.authenticate_agent(&id, "02").await, Err(StoreError::StaleSvid(_))));

    // Renewal: the old SVID works until the new one is first used, then never again.
    let renewal = |presented: &str, new: &str, now| AgentRenewal {
        spiffe_id: id.clone(),
        presented_serial: presented.into(),
        new_serial: new.into(),
        now,
        svid_expires_at: now + 3600,
    };
    assert!(matches!(store.renew_agent(&renewal("09", "02", 20)).await, Err(StoreError::StaleSvid(_))));
    let renewed = store.renew_agent(&renewal("01", "02", 20)).await.unwrap();
    assert_eq!((renewed.last_seen, renewed.new_svid_serial.as_deref()), (20, Some("02")));
    store.authenticate_agent(&id, "01").await.expect("the previous SVID until the new one is used");
    store.authenticate_agent(&id, "02").await.expect("the renewed SVID");
    assert!(matches!(store.authenticate_agent(&id, "01").await, Err(StoreError::StaleSvid(_))));
    assert!(matches!(store.renew_agent(&renewal("01", "03", 30)).await, Err(StoreError::StaleSvid(_))));
    let now = store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!((now.svid_serial.as_deref(), now.new_svid_serial), (Some("02"), None));

    // Attesting again keeps the first-attestation time and retires every earlier SVID.
    let again = AgentRecord { created_at: 40, last_seen: 40, svid_serial: Some("04".into()), ..a.clone() };
    assert_eq!(store.attest_agent(&again).await.unwrap().created_at, 10);
    assert!(matches!(store.authenticate_agent(&id, "02").await, Err(StoreError::StaleSvid(_))));

    // A ban holds against attestation, renewal and calls.
    let banned = store.ban_agent(&id, 50).await.unwrap();
    assert!(banned.banned);
    assert!(matches!(store.attest_agent(&again).await, Err(StoreError::AgentBanned(_))));
    assert!(matches!(store.renew_agent(&renewal("04", "05", 60)).await, Err(StoreError::AgentBanned(_))));
    assert!(matches!(store.authenticate_agent(&id, "04").await, Err(StoreError::AgentBanned(_))));
    assert_eq!(store.list_agents().await.unwrap(), vec![banned]);
    // Eviction deletes the record (and a ban with it); a renewal never brings it back.
    assert!(store.delete_agent(&id).await.unwrap());
    assert!(!store.delete_agent(&id).await.unwrap());
    assert!(matches!(store.renew_agent(&renewal("04", "05", 70)).await, Err(StoreError::AgentNotFound(_))));
    assert!(store.list_agents().await.unwrap().is_empty());

    // An ID that never attested can be banned ahead of time.
    let never = SpiffeId::parse("spiffe://example.org/agent/never").unwrap();
    assert!(store.ban_agent(&never, 80).await.unwrap().banned);
    let fresh = AgentRecord { spiffe_id: never.clone(), ..a.clone() };
    assert!(matches!(store.attest_agent(&fresh).await, Err(StoreError::AgentBanned(_))));
    assert!(store.delete_agent(&never).await.unwrap());
}

/// A ban racing with renewals and attestations of the same agent always holds once it returned.
async fn bans_win_races(store: Arc<dyn Store>) {
    for trial in 0..20 {
        let id = SpiffeId::parse(&format!("spiffe://example.org/agent/race-{trial}")).unwrap();
        let record = AgentRecord {
            spiffe_id: id.clone(),
            attestation: "join_token".into(),
            selectors: Default::default(),
            created_at: 1,
            last_seen: 1,
            svid_expires_at: 100,
            banned: false,
            svid_serial: Some("01".into()),
            new_svid_serial: None,
        };
        store.attest_agent(&record).await.unwrap();
        let mut racers = Vec::new();
        for i in 0..4 {
            let (s, record, id) = (store.clone(), record.clone(), id.clone());
            racers.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    let renewal = AgentRenewal {
                        spiffe_id: id,
                        presented_serial: "01".into(),
                        new_serial: format!("1{i}"),
                        now: 2,
                        svid_expires_at: 200,
                    };
                    s.renew_agent(&renewal).await.map(|_| ())
                } else {
                    s.attest_agent(&record).await.map(|_| ())
                }
            }));
        }
        store.ban_agent(&id, 2).await.unwrap();
        for r in racers {
            // Each racer either finished before the ban or was refused by it.
            match r.await.unwrap() {
                Ok(()) | Err(StoreError::AgentBanned(_)) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(store.get_agent(&id).await.unwrap().unwrap().banned, "trial {trial}: the ban was lost");
        store.delete_agent(&id).await.unwrap();
    }
}

fn group(name: &str, selectors: &[&str]) -> NodeGroup {
    let td = TrustDomain::new("example.org").expect("valid trust domain");
    let spec = NodeGroupSpec {
        spiffe_id: td.id_with_path(&format!("/vouch/group/{name}")).expect("valid path"),
        selectors: selectors.iter().map(|s| Selector::parse(s).expect("valid selector")).collect(),
        owner: "team-a".into(),
        purpose: "tests".into(),
    };
    NodeGroup::create(spec, &td, 1000).expect("valid group")
}

/// Node groups round-trip, are unique by SPIFFE ID, list in order, and cannot be deleted while an
/// entry is parented to them (the refusal changes nothing).
async fn node_groups(store: &dyn Store) {
    let prod = group("prod", &["k8s_psat:cluster:prod"]);
    let dc1 = group("dc1", &["x509pop:ca:dc1", "x509pop:subject:cn:node-1"]);
    assert!(store.list_groups().await.expect("list").is_empty());
    store.create_group(&prod).await.expect("create");
    store.create_group(&dc1).await.expect("create");
    assert!(
        matches!(store.create_group(&prod).await, Err(StoreError::GroupExists(id)) if id == prod.spiffe_id.to_string())
    );
    assert_eq!(
        store.get_group(&prod.spiffe_id).await.expect("get"),
        Some(prod.clone()),
        "reads back unchanged"
    );
    let unknown = SpiffeId::parse("spiffe://example.org/vouch/group/none").unwrap();
    assert_eq!(store.get_group(&unknown).await.expect("get"), None);
    assert_eq!(
        store.list_groups().await.expect("list"),
        vec![dc1.clone(), prod.clone()],
        "ordered by SPIFFE ID"
    );

    let under = entry("under-prod", "/web", "/vouch/group/prod", &["unix:uid:1"]);
    store.create_entries(std::slice::from_ref(&under)).await.expect("create entry under the group");
    let writes = store.write_transactions();
    match store.delete_group(&prod.spiffe_id).await {
        Err(StoreError::GroupInUse { id, entries }) => {
            assert_eq!((id.as_str(), entries), (prod.spiffe_id.to_string().as_str(), 1));
        }
        other => panic!("a group with an entry under it must not be deleted: {other:?}"),
    }
    assert!(store.write_transactions() >= writes);
    assert_eq!(
        store.get_group(&prod.spiffe_id).await.expect("get"),
        Some(prod.clone()),
        "the refusal changed nothing"
    );
    store.delete_entry(&under.id).await.expect("delete entry");
    assert_eq!(store.delete_group(&prod.spiffe_id).await.expect("delete"), prod);
    assert!(matches!(store.delete_group(&prod.spiffe_id).await, Err(StoreError::GroupNotFound(_))));
    assert_eq!(store.delete_group(&dc1.spiffe_id).await.expect("delete"), dc1);
    assert!(store.list_groups().await.expect("list").is_empty());
}

/// Federation relationships round-trip, are unique by trust domain, list in order; settings change
/// only at the revision read, and a refresh result is stored only under the revision it was made for.
async fn federation(store: &dyn Store) {
    use crate::FederationRow;
    let td = |n: &str| vouch_core::TrustDomain::new(n).expect("valid trust domain");
    let row = |n: &str| FederationRow {
        trust_domain: td(n),
        relationship: format!("{{\"url\":\"https://{n}\"}}"),
        state: "{}".into(),
        revision: 1,
    };
    assert!(store.list_federations().await.expect("list").is_empty());
    store.create_federation(&row("b.org")).await.expect("create");
    store.create_federation(&row("a.org")).await.expect("create");
    assert!(
        matches!(store.create_federation(&row("a.org")).await, Err(StoreError::FederationExists(t)) if t == "a.org")
    );
    assert_eq!(store.get_federation(&td("a.org")).await.expect("get"), Some(row("a.org")));
    assert_eq!(store.get_federation(&td("c.org")).await.expect("get"), None);
    let listed: Vec<String> =
        store.list_federations().await.expect("list").iter().map(|r| r.trust_domain.to_string()).collect();
    assert_eq!(listed, ["a.org", "b.org"]);

    // A refresh result at the current revision is stored.
    assert!(store.save_federation_state(&td("a.org"), 1, "{\"n\":1}").await.expect("save"));
    // The settings change at the revision read; the state with them.
    let mut changed = row("a.org");
    changed.relationship = "{\"url\":\"https://a2\"}".into();
    assert_eq!(store.update_federation(&changed).await.expect("update"), 2);
    assert!(matches!(store.update_federation(&changed).await, Err(StoreError::FederationConflict(_))));
    let mut gone = row("c.org");
    gone.revision = 1;
    assert!(matches!(store.update_federation(&gone).await, Err(StoreError::FederationNotFound(_))));
    // A refresh made under revision 1 no longer lands.
    assert!(!store.save_federation_state(&td("a.org"), 1, "{\"stale\":true}").await.expect("save"));
    let stored = store.get_federation(&td("a.org")).await.expect("get").expect("present");
    assert_eq!(
        (stored.relationship.as_str(), stored.state.as_str(), stored.revision),
        (changed.relationship.as_str(), "{}", 2)
    );

    assert_eq!(store.delete_federation(&td("a.org")).await.expect("delete").revision, 2);
    assert!(matches!(store.delete_federation(&td("a.org")).await, Err(StoreError::FederationNotFound(_))));
    assert!(!store.save_federation_state(&td("a.org"), 2, "{}").await.expect("save"));
    store.delete_federation(&td("b.org")).await.expect("delete");
    assert!(store.list_federations().await.expect("list").is_empty());
}

fn secret_version(path: &str, version: u64, at: i64, value: &[u8]) -> NewSecretVersion {
    NewSecretVersion {
        secret: SecretRecord {
            path: vouch_core::SecretPath::parse(path).unwrap(),
            owner: "team-a".into(),
            purpose: format!("v{version}"),
            rotation_due: (version == 2).then_some(9_000),
            created_at: at,
            updated_at: at,
            current_version: version,
        },
        sealed_key: vec![0xAA, version as u8],
        ciphertext: value.to_vec(),
    }
}

async fn secrets(store: Arc<dyn Store>) {
    let p = vouch_core::SecretPath::parse("app/db").unwrap();
    assert_eq!(store.get_secret(&p).await.unwrap(), None);
    assert!(store.list_secret_versions(&p).await.unwrap().is_empty());
    assert!(
        matches!(
            store.put_secret_version(&secret_version("app/db", 2, 100, b"x")).await,
            Err(StoreError::SecretConflict(_))
        ),
        "a new secret starts at version 1"
    );
    assert_eq!(store.get_secret(&p).await.unwrap(), None, "a refused write leaves nothing");
    store.put_secret_version(&secret_version("app/db", 1, 100, b"one")).await.unwrap();
    store.put_secret_version(&secret_version("app/db", 2, 200, b"\x00two\xff")).await.unwrap();
    store.put_secret_version(&secret_version("app/cache", 1, 150, b"c")).await.unwrap();
    assert!(matches!(
        store.put_secret_version(&secret_version("app/db", 2, 300, b"again")).await,
        Err(StoreError::SecretConflict(p)) if p == "app/db"
    ));
    let meta = store.get_secret(&p).await.unwrap().unwrap();
    assert_eq!(
        (meta.current_version, meta.created_at, meta.updated_at, meta.purpose.as_str(), meta.rotation_due),
        (2, 100, 200, "v2", Some(9_000)),
        "metadata follows the latest write; the creation time is kept"
    );
    let paths: Vec<String> = store.list_secrets().await.unwrap().iter().map(|s| s.path.to_string()).collect();
    assert_eq!(paths, ["app/cache", "app/db"], "ordered by path");
    let v2 = store.get_secret_version(&p, 2).await.unwrap().unwrap();
    assert_eq!(v2.ciphertext.as_deref(), Some(&b"\x00two\xff"[..]), "bytes round-trip");
    assert_eq!(v2.sealed_key.as_deref(), Some(&[0xAA, 2][..]));
    assert_eq!((v2.record.version, v2.record.created_at, v2.record.deleted_at), (2, 200, None));
    assert_eq!(store.get_secret_version(&p, 3).await.unwrap(), None);

    // Concurrent writers of the same next version: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.put_secret_version(&secret_version("app/db", 3, 300, &[i])).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::SecretConflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "one writer per version");

    // Soft delete, undelete, destroy; unknown versions change nothing.
    assert_eq!(store.change_secret_versions(&p, &[1, 2], VersionChange::Delete(400)).await.unwrap(), [1, 2]);
    assert_eq!(
        store.change_secret_versions(&p, &[1], VersionChange::Delete(401)).await.unwrap(),
        Vec::<u64>::new()
    );
    assert!(matches!(
        store.change_secret_versions(&p, &[2, 9], VersionChange::Undelete).await,
        Err(StoreError::SecretVersionNotFound { version: 9, .. })
    ));
    let versions = store.list_secret_versions(&p).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.deleted_at).collect::<Vec<_>>(),
        [Some(400), Some(400), None],
        "nothing undeleted"
    );
    assert_eq!(store.change_secret_versions(&p, &[2], VersionChange::Undelete).await.unwrap(), [2]);
    assert_eq!(store.change_secret_versions(&p, &[1], VersionChange::Destroy(500)).await.unwrap(), [1]);
    let v1 = store.get_secret_version(&p, 1).await.unwrap().unwrap();
    assert_eq!(
        (v1.sealed_key, v1.ciphertext, v1.record.destroyed_at),
        (None, None, Some(500)),
        "the value is gone"
    );
    assert_eq!(
        store.change_secret_versions(&p, &[1], VersionChange::Undelete).await.unwrap(),
        Vec::<u64>::new(),
        "a destroyed version stays destroyed"
    );
    assert!(matches!(
        store
            .change_secret_versions(
                &vouch_core::SecretPath::parse("nope").unwrap(),
                &[1],
                VersionChange::Delete(1)
            )
            .await,
        Err(StoreError::SecretNotFound(_))
    ));
    let v2 = store.get_secret_version(&p, 2).await.unwrap().unwrap();
    assert_eq!((v2.record.deleted_at, v2.ciphertext.is_some()), (None, true));

    // A read in one call: the latest live version, or the one asked for in whatever state.
    let version_of =
        |r: &Option<SecretRead>| r.as_ref().and_then(|r| r.version.as_ref()).map(|v| v.record.version);
    let read = store.read_secret(&p, None).await.unwrap();
    assert_eq!(read.as_ref().map(|r| r.secret.current_version), Some(3));
    assert_eq!(version_of(&read), Some(3));
    assert!(read.unwrap().version.unwrap().ciphertext.is_some());
    store.change_secret_versions(&p, &[3], VersionChange::Delete(600)).await.unwrap();
    assert_eq!(version_of(&store.read_secret(&p, None).await.unwrap()), Some(2), "the latest live one");
    let v3 = store.read_secret(&p, Some(3)).await.unwrap().unwrap().version.unwrap();
    assert_eq!((v3.record.version, v3.record.deleted_at), (3, Some(600)), "asked for, deleted");
    let v1 = store.read_secret(&p, Some(1)).await.unwrap().unwrap().version.unwrap();
    assert_eq!((v1.record.destroyed_at, v1.ciphertext), (Some(500), None), "asked for, destroyed");
    assert_eq!(version_of(&store.read_secret(&p, Some(9)).await.unwrap()), None);
    store.change_secret_versions(&p, &[2], VersionChange::Delete(601)).await.unwrap();
    let none_live = store.read_secret(&p, None).await.unwrap().unwrap();
    assert_eq!((none_live.secret.current_version, none_live.version), (3, None), "no live version");
    assert_eq!(store.read_secret(&vouch_core::SecretPath::parse("nope").unwrap(), None).await.unwrap(), None);
}

async fn policies(store: Arc<dyn Store>) {
    assert!(store.list_policies().await.expect("list").is_empty());
    assert_eq!(store.policies_revision().await.expect("revision"), 0);
    assert!(store.policy_history("a").await.expect("history").is_empty());
    let v1 = store
        .put_policy("b", &ns("default"), "permit(principal, action, resource);", "admin:1", 100)
        .await
        .expect("put");
    assert_eq!(
        (v1.version, v1.text.as_deref(), v1.created_at),
        (1, Some("permit(principal, action, resource);"), 100)
    );
    let r1 = store.policies_revision().await.expect("revision");
    assert!(r1 > 0, "a write raises the revision");
    let a1 = store.put_policy("a", &ns("team-a"), "one", "admin:1", 101).await.expect("put");
    assert_eq!(a1.namespace, ns("team-a"));
    let v2 = store.put_policy("b", &ns("team-b"), "two", "admin:2", 102).await.expect("put");
    assert_eq!(v2.version, 2, "each put is a new version");
    assert!(store.policies_revision().await.expect("revision") > r1);
    let listed = store.list_policies().await.expect("list");
    let current: Vec<(&str, u64, Option<&str>, &str)> =
        listed.iter().map(|p| (p.id.as_str(), p.version, p.text.as_deref(), p.namespace.as_str())).collect();
    assert_eq!(
        current,
        [("a", 1, Some("one"), "team-a"), ("b", 2, Some("two"), "team-b")],
        "the current versions with their namespaces, ordered by id"
    );

    // A deletion is a version without text; the history keeps every version, oldest first.
    let gone = store.delete_policy("b", "admin:3", 103).await.expect("delete");
    assert_eq!((gone.version, gone.text.as_deref(), gone.author.as_str()), (3, None, "admin:3"));
    assert_eq!(gone.namespace, ns("team-b"), "a deletion stays in the namespace it deletes from");
    assert!(
        matches!(store.delete_policy("b", "admin:3", 104).await, Err(StoreError::PolicyNotFound(id)) if id == "b")
    );
    assert!(matches!(store.delete_policy("zz", "admin:3", 104).await, Err(StoreError::PolicyNotFound(_))));
    let history = store.policy_history("b").await.expect("history");
    let versions: Vec<(u64, Option<&str>, &str, &str)> = history
        .iter()
        .map(|p| (p.version, p.text.as_deref(), p.author.as_str(), p.namespace.as_str()))
        .collect();
    assert_eq!(
        versions,
        [
            (1, Some("permit(principal, action, resource);"), "admin:1", "default"),
            (2, Some("two"), "admin:2", "team-b"),
            (3, None, "admin:3", "team-b")
        ]
    );
    assert_eq!(store.list_policies().await.expect("list").len(), 1);
    // Written again after deletion: the numbering goes on.
    assert_eq!(store.put_policy("b", &ns("default"), "again", "admin:1", 105).await.expect("put").version, 4);

    // Concurrent writers of one id get distinct versions without gaps.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.put_policy("c", &ns("default"), &format!("t{i}"), "admin", 200).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("task").expect("put").version);
    }
    got.sort_unstable();
    assert_eq!(got, (1..=8).collect::<Vec<u64>>());
    for id in ["a", "b", "c"] {
        store.delete_policy(id, "admin", 300).await.expect("delete");
    }
    assert!(store.list_policies().await.expect("list").is_empty());
}

async fn db_leases(store: Arc<dyn Store>) {
    use crate::{DbLease, LeaseState};
    assert!(store.list_db_leases().await.expect("list").is_empty());
    let lease = DbLease {
        id: "00ff".into(),
        role: "vouch_00ff".into(),
        connection: "orders".into(),
        template: "readonly".into(),
        identity: "spiffe://example.org/payments".into(),
        state: LeaseState::Creating,
        created_at: 100,
        expires_at: 400,
        max_expires_at: 1000,
    };
    store.create_db_lease(&lease).await.expect("create");
    assert!(store.create_db_lease(&lease).await.is_err(), "one lease per id");
    assert_eq!(store.get_db_lease("00ff").await.expect("get"), Some(lease.clone()));
    // A creating lease cannot be renewed: its role may not exist yet.
    assert!(!store.renew_db_lease("00ff", 500).await.expect("renew"));
    assert!(store.activate_db_lease("00ff").await.expect("activate"));
    assert!(
        !store.activate_db_lease("00ff").await.expect("activate twice"),
        "only a creating lease activates"
    );
    assert!(store.renew_db_lease("00ff", 500).await.expect("renew"));
    let got = store.get_db_lease("00ff").await.expect("get").expect("lease");
    assert_eq!((got.state, got.expires_at), (LeaseState::Active, 500));
    assert_eq!(store.list_db_leases().await.expect("list"), vec![got]);
    assert!(!store.renew_db_lease("nope", 500).await.expect("renew unknown"));
    assert!(!store.activate_db_lease("nope").await.expect("activate unknown"));
    assert!(store.delete_db_lease("00ff").await.expect("delete"));
    assert!(!store.delete_db_lease("00ff").await.expect("delete twice"));
    assert_eq!(store.get_db_lease("00ff").await.expect("get"), None);
}

/// A record following `prev`, hashed by a stand-in for the real chain (the store keeps hashes
/// opaque).
fn audit_record(
    seq: u64,
    prev: &str,
    event: &str,
    spiffe_id: &str,
    node: Option<&str>,
) -> vouch_core::audit::AuditRecord {
    use vouch_core::audit::AuditValue;
    let mut fields = vouch_core::audit::AuditFields::new();
    fields.insert("spiffe_id".into(), AuditValue::Text(spiffe_id.into()));
    if let Some(n) = node {
        fields.insert("agent".into(), AuditValue::Text(n.into()));
    }
    fields.insert("count".into(), AuditValue::Int(-(seq as i64)));
    vouch_core::audit::AuditRecord {
        seq,
        time_ms: 1000 * seq as i64,
        event: event.into(),
        fields,
        hash: format!("{prev}+{seq}"),
    }
}

/// Appends make one gap-free chain however many writers race; search filters; checkpoints and the
/// first key are kept once.
async fn audit_log(store: Arc<dyn Store>) {
    use crate::{AuditHead, AuditKeyRecord, AuditQuery};
    use vouch_core::audit::{AuditCheckpoint, GENESIS_HASH};
    let head = store.audit_head().await.expect("head");
    assert_eq!(
        head,
        AuditHead { seq: 0, hash: GENESIS_HASH.into() },
        "an empty log starts at the genesis hash"
    );
    // Eight writers append two records each at once: every append sees the head the previous left.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(Box::new(move |head: &AuditHead| {
                    let a = audit_record(
                        head.seq + 1,
                        &head.hash,
                        "entry.create",
                        &format!("spiffe://example.org/w{w}"),
                        None,
                    );
                    let b = audit_record(
                        head.seq + 2,
                        &a.hash,
                        "svid.x509.mint",
                        "spiffe://example.org/x",
                        Some("spiffe://example.org/agent/n1"),
                    );
                    vec![a, b]
                }))
                .await
                .expect("append")
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let all = store.audit_records(&AuditQuery { limit: 100, ..Default::default() }).await.expect("records");
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=16).collect::<Vec<_>>());
    let mut prev = GENESIS_HASH.to_owned();
    for r in &all {
        assert_eq!(r.hash, format!("{prev}+{}", r.seq), "record {} follows the head it was sealed on", r.seq);
        prev = r.hash.clone();
    }
    assert_eq!(all[0].fields.get("count"), Some(&vouch_core::audit::AuditValue::Int(-1)), "fields read back");
    let head = store.audit_head().await.expect("head");
    assert_eq!((head.seq, head.hash), (16, prev));

    // A batch that does not follow the head writes nothing.
    let err = store
        .append_audit(Box::new(|head: &AuditHead| {
            vec![audit_record(head.seq + 2, &head.hash, "x", "spiffe://example.org/x", None)]
        }))
        .await
        .expect_err("gap refused");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert_eq!(store.audit_head().await.expect("head").seq, 16);
    assert_eq!(store.append_audit(Box::new(|_: &AuditHead| vec![])).await.expect("empty").seq, 16);

    // Search.
    let q = |f: AuditQuery| {
        let store = store.clone();
        async move {
            store
                .audit_records(&AuditQuery { limit: 100, ..f })
                .await
                .expect("search")
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        q(AuditQuery { node: Some("spiffe://example.org/agent/n1".into()), ..Default::default() })
            .await
            .len(),
        8
    );
    assert_eq!(q(AuditQuery { event: Some("svid.*".into()), ..Default::default() }).await.len(), 8);
    assert_eq!(q(AuditQuery { event: Some("svid.x509.mint".into()), ..Default::default() }).await.len(), 8);
    assert_eq!(
        q(AuditQuery { event: Some("svid".into()), ..Default::default() }).await.len(),
        0,
        "exact unless `*`"
    );
    assert_eq!(
        q(AuditQuery { event: Some("%*".into()), ..Default::default() }).await.len(),
        0,
        "LIKE wildcards are literal"
    );
    assert_eq!(
        q(AuditQuery { spiffe_id: Some("spiffe://example.org/x".into()), ..Default::default() }).await.len(),
        8
    );
    assert_eq!(
        q(AuditQuery { since_ms: Some(3000), until_ms: Some(6000), ..Default::default() }).await,
        vec![3, 4, 5]
    );
    assert_eq!(q(AuditQuery { after_seq: 14, ..Default::default() }).await, vec![15, 16]);
    assert_eq!(
        store.audit_records(&AuditQuery { limit: 2, ..Default::default() }).await.expect("page").len(),
        2
    );

    // Checkpoints: one per sequence number.
    let cp =
        AuditCheckpoint { seq: 8, hash: "h".into(), time_ms: 5, key_id: "k".into(), signature: "s".into() };
    assert!(store.add_audit_checkpoint(&cp).await.expect("checkpoint"));
    assert!(!store
        .add_audit_checkpoint(&AuditCheckpoint { signature: "t".into(), ..cp.clone() })
        .await
        .expect("again"));
    assert_eq!(store.audit_checkpoints().await.expect("checkpoints"), vec![cp]);

    // The first key is kept, whoever comes second.
    let key = |id: &str| AuditKeyRecord {
        id: id.into(),
        algorithm: "Ed25519".into(),
        public_key: "p".into(),
        sealed_key: vec![1, 2, 3],
        created_at: 7,
    };
    let (a, b) = (store.clone(), store.clone());
    let (ka, kb) =
        tokio::join!(
            async move { a.audit_keys(&key("a")).await },
            async move { b.audit_keys(&key("b")).await }
        );
    let (ka, kb) = (ka.expect("keys"), kb.expect("keys"));
    assert_eq!(ka.len(), 1);
    assert_eq!(ka, kb, "one key for every caller");
}
