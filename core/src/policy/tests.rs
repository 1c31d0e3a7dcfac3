use super::*;
use crate::uuid::Uuid;
use crate::{Code, Error, Scope, Verdict};
use proptest::prelude::*;
use serde_json::Value;

fn ws() -> Scope {
    Scope::Workspace(Uuid::from_u128(0x7b0e_9d8a_0000_4000_8000_0000_0000_0001))
}

fn detail(r: &Refusal) -> Value {
    serde_json::from_str(&r.detail_json()).expect("the DETAIL is JSON")
}

#[test]
fn self_write_refuses_only_agents_writing_a_platform_workspace() {
    for op in [Write::Insert, Write::Update, Write::Delete] {
        let r = self_write(true, op, ws(), "K", Some("platform")).unwrap_err();
        assert_eq!(r.code(), Code::ConciergeSelfWriteBlocked);
        assert_eq!(r.event(), Some(op.event()));
        assert!(self_write(false, op, ws(), "K", Some("platform")).is_ok());
        assert!(self_write(true, op, ws(), "K", Some("workspace")).is_ok());
        assert!(self_write(true, op, Scope::Global, "K", None).is_ok());
    }
    // No workspace row: unknown kind refuses a write, but not a delete (a cascade).
    assert_eq!(self_write(true, Write::Insert, ws(), "K", None).unwrap_err().code(), Code::WorkspaceKindUnknown);
    assert_eq!(self_write(true, Write::Update, ws(), "K", None).unwrap_err().code(), Code::WorkspaceKindUnknown);
    assert!(self_write(true, Write::Delete, ws(), "K", None).is_ok());
    assert!(!needs_kind(false, ws()) && !needs_kind(true, Scope::Global) && needs_kind(true, ws()));
}

#[test]
fn forbidden_keys_refuse_writes_but_not_deletes() {
    let r = forbidden_key(Write::Insert, ws(), "MODEL_PROVIDER", Some("renamed to MODEL")).unwrap_err();
    assert_eq!(r.code(), Code::ForbiddenSecretKey);
    assert_eq!(r.message(), "FORBIDDEN_SECRET_KEY: the key name MODEL_PROVIDER may not be written: renamed to MODEL");
    assert!(forbidden_key(Write::Delete, ws(), "MODEL_PROVIDER", Some("x")).is_ok());
    assert!(forbidden_key(Write::Update, ws(), "OTHER", None).is_ok());
}

#[test]
fn a_provider_name_as_model_is_refused_and_named() {
    let r = model_value(Write::Insert, Scope::Global, "anthropic", true).unwrap_err();
    assert_eq!(r.code(), Code::InvalidModelId);
    let d = detail(&r);
    assert_eq!(d["provider"], "anthropic");
    assert_eq!(d["scope"], "global");
    assert!(model_value(Write::Insert, ws(), "anthropic:claude", false).is_ok());
    assert!(checks_model_value(Write::Update, MODEL) && !checks_model_value(Write::Delete, MODEL));
    assert!(!checks_model_value(Write::Insert, "ANTHROPIC_API_KEY"));
}

#[test]
fn kind_changes_and_deletes_of_platform_workspaces_are_refused_for_agents() {
    let p = Some("platform");
    let w = Some("workspace");
    assert_eq!(workspace_write(true, ws(), p, None).unwrap_err().event(), Some("workspace.delete.refused"));
    assert_eq!(workspace_write(true, ws(), w, Some(p)).unwrap_err().event(), Some("workspace.kind.refused"));
    assert_eq!(workspace_write(true, ws(), p, Some(w)).unwrap_err().event(), Some("workspace.kind.refused"));
    assert_eq!(workspace_write(true, ws(), p, Some(None)).unwrap_err().code(), Code::ConciergeSelfWriteBlocked);
    assert!(workspace_write(true, ws(), p, Some(p)).is_ok());
    assert!(workspace_write(true, ws(), w, None).is_ok());
    assert!(workspace_write(true, ws(), w, Some(Some("external"))).is_ok());
    assert!(workspace_write(false, ws(), p, None).is_ok());
}

#[test]
fn platform_identity_needs_a_usable_model_only_when_platform_and_online() {
    let unreachable = || -> ModelState { panic!("MODEL read when it is not needed") };
    assert!(platform_identity(ws(), Some("workspace"), true, unreachable).is_ok());
    assert!(platform_identity(ws(), Some("platform"), false, unreachable).is_ok());
    assert!(platform_identity(ws(), Some("platform"), true, || Ok(true)).is_ok());
    let r = platform_identity(ws(), Some("platform"), true, || Ok(false)).unwrap_err();
    assert_eq!((r.code(), r.event()), (Code::PlatformAgentIdentityGate, Some("workspace.online.refused")));
    let e = Error::DecryptFailed { reason: "x" };
    let r = platform_identity(ws(), Some("platform"), true, || Err(e)).unwrap_err();
    assert!(r.reason().contains("SG001 DECRYPT_FAILED"), "{}", r.reason());
    assert_eq!(detail(&r)["key"], "MODEL");
    assert!(truncate_secrets(false).is_ok());
    assert_eq!(truncate_secrets(true).unwrap_err().code(), Code::PlatformAgentIdentityGate);
}

fn provider(name: &str, is_platform: bool) -> Provider {
    Provider { name: name.into(), is_platform, auth_env: vec!["A".into(), "B".into()] }
}

fn cred(key: &str, verdict: Option<Verdict>) -> Credential {
    Credential { scope: ws(), key: key.into(), verdict }
}

#[test]
fn byok_outcomes() {
    let p = provider("anthropic", false);
    assert!(byok_exempt(Some("external"), Some(&p)));
    assert!(byok_exempt(Some("workspace"), None));
    assert!(byok_exempt(Some("workspace"), Some(&provider("platform", true))));
    assert!(!byok_exempt(Some("workspace"), Some(&p)));

    assert_eq!(evaluate_byok(&p, &[]), Byok::Missing { provider: "anthropic".into() });
    let dead = [cred("A", Some(Verdict::Dead)), cred("B", Some(Verdict::Dead))];
    assert_eq!(evaluate_byok(&p, &dead), Byok::Dead { provider: "anthropic".into() });
    let mixed = [cred("A", Some(Verdict::Dead)), cred("B", Some(Verdict::Transient))];
    assert_eq!(evaluate_byok(&p, &mixed), Byok::Satisfied { transient: vec!["B".into()] });
    assert_eq!(evaluate_byok(&p, &[cred("A", None)]), Byok::Satisfied { transient: vec![] });

    let r = Byok::Missing { provider: "anthropic".into() }.refusal(ws()).unwrap();
    assert_eq!(r.code(), Code::MissingByokCredential);
    let d = detail(&r);
    assert_eq!((d["provider"].as_str(), d["code"].as_str()), (Some("anthropic"), Some("MISSING_BYOK_CREDENTIAL")));
    assert_eq!(Byok::Dead { provider: "x".into() }.refusal(ws()).unwrap().code(), Code::ByokCredentialInvalid);
    assert!(Byok::Exempt.refusal(ws()).is_none());
}

fn routes(rows: &[(&str, &str, Option<&str>)]) -> Vec<Route> {
    rows.iter()
        .map(|(pattern, provider, runtime)| Route {
            pattern: pattern.to_string(),
            provider: provider.to_string(),
            runtime: runtime.map(str::to_string),
        })
        .collect()
}

#[test]
fn routing_prefers_the_runtime_then_the_longest_prefix() {
    let r = routes(&[
        ("anthropic:", "anthropic", None),
        ("anthropic:claude-", "platform", None),
        ("anthropic:", "bedrock", Some("aws-runtime")),
        ("gpt-", "openai", None),
    ]);
    assert_eq!(route(&r, None, "anthropic:claude-opus"), Some("platform"));
    assert_eq!(route(&r, Some("claude-code"), "anthropic:other"), Some("anthropic"));
    // A route naming the runtime beats a longer one that does not.
    assert_eq!(route(&r, Some("aws-runtime"), "anthropic:claude-opus"), Some("bedrock"));
    assert_eq!(route(&r, None, "mistral-large"), None);
    assert_eq!(route(&r, None, ""), None);
    // Ties go to the smallest provider name, whatever the order of the rows.
    let tie = routes(&[("m", "zeta", None), ("m", "alpha", None)]);
    assert_eq!(route(&tie, None, "model"), Some("alpha"));
}

#[test]
fn three_states_are_never_confused() {
    assert_eq!(three_state(Ok(Some("v".into()))), ("value", Some("v".into()), None));
    assert_eq!(three_state(Ok(Some(String::new()))).0, "value");
    assert_eq!(three_state(Ok(None)), ("unset", None, None));
    assert_eq!(three_state(Err(Error::UnknownKeyVersion { version: 9 })), ("error", None, Some("SG002")));
}

#[test]
fn concierge_plans() {
    let decrypt = || Error::DecryptFailed { reason: "x" };
    let never = |_: &str| -> Result<bool, ()> { panic!("routed when it need not be") };
    let plan = |provider, model: Result<Option<String>, Error>| {
        concierge_provider_plan(true, provider, || model, |m: &str| Ok::<_, ()>(m.starts_with("platform")))
    };
    assert_eq!(concierge_provider_plan(false, Ok(None), || Ok(None), never), Ok(Plan::NotPlatform));
    assert_eq!(concierge_provider_plan(true, Ok(Some("x".into())), || Err(decrypt()), never), Ok(Plan::Respected));
    assert!(matches!(concierge_provider_plan(true, Err(decrypt()), || Ok(None), never), Ok(Plan::FailClosed(_))));
    assert!(
        matches!(plan(Ok(None), Err(decrypt())), Ok(Plan::FailClosed(why)) if why.starts_with("MODEL cannot be read: SG001"))
    );
    assert_eq!(plan(Ok(None), Ok(None)), Ok(Plan::Seed(Seed::IfAbsent, "platform".into())));
    assert_eq!(plan(Ok(None), Ok(Some(String::new()))), Ok(Plan::Seed(Seed::IfAbsent, "platform".into())));
    assert_eq!(plan(Ok(None), Ok(Some("platform:m".into()))), Ok(Plan::Seed(Seed::IfAbsent, "platform".into())));
    assert_eq!(plan(Ok(None), Ok(Some("anthropic:m".into()))), Ok(Plan::SkippedByok));

    assert_eq!(concierge_model_plan(false, Err(decrypt()), "d"), Plan::NotPlatform);
    assert!(matches!(concierge_model_plan(true, Err(decrypt()), "d"), Plan::FailClosed(_)));
    assert_eq!(concierge_model_plan(true, Ok(Some("m".into())), "d"), Plan::Respected);
    assert_eq!(concierge_model_plan(true, Ok(Some(String::new())), "d"), Plan::Seed(Seed::ReplaceEmpty, "d".into()));
    assert_eq!(concierge_model_plan(true, Ok(None), "d"), Plan::Seed(Seed::IfAbsent, "d".into()));

    assert_eq!(Plan::Seed(Seed::IfAbsent, "x".into()).answer(true), "seeded");
    assert_eq!(Plan::Seed(Seed::IfAbsent, "x".into()).answer(false), "respected");
    assert_eq!(Plan::FailClosed("x".into()).answer(false), "fail_closed");
}

#[test]
fn registration_checks_identity_first_then_byok() {
    let no_byok = || -> Result<Byok, ()> { panic!("BYOK asked after an identity failure") };
    assert_eq!(registration(true, || Ok(false), no_byok).map(|r| r.0), Some(Code::PlatformAgentIdentityGate));
    let unreadable = || Err(Error::UnknownKeyVersion { version: 3 });
    assert!(registration(true, unreadable, no_byok).unwrap().1.contains("SG002 UNKNOWN_KEY_VERSION"));
    assert_eq!(registration(true, || Ok(true), || Ok(Byok::Exempt)), None);
    assert_eq!(
        registration(false, || panic!("MODEL read for a non-platform"), || Err(())).map(|r| r.0),
        Some(Code::MissingByokCredential)
    );
    let dead = || Ok(Byok::Dead { provider: "p".into() });
    assert_eq!(registration(false, || Ok(false), dead).map(|r| r.0), Some(Code::ByokCredentialInvalid));

    let (event, audit) =
        registration_failed(ws(), Code::PlatformAgentIdentityGate, "r", serde_json::json!({"agent": false}));
    let event: Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["event"], "WORKSPACE_PROVISION_FAILED");
    assert_eq!(event["code"], "PLATFORM_AGENT_IDENTITY_GATE");
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!((audit["key"].as_str(), audit["sqlstate"].as_str()), (Some("MODEL"), Some("SG102")));
}

#[test]
fn refusal_json_carries_code_reason_fields_and_never_more() {
    let r = Refusal::new(Code::ConciergeSelfWriteBlocked, "why")
        .scoped(ws())
        .with("key", "K")
        .audited("secret.set.refused");
    assert_eq!(r.message(), "CONCIERGE_SELF_WRITE_BLOCKED: why");
    let d = detail(&r);
    assert_eq!(d["code"], "CONCIERGE_SELF_WRITE_BLOCKED");
    assert_eq!(d["sqlstate"], "SG101");
    assert_eq!(d["reason"], "why");
    assert_eq!(d["workspace_id"], "7b0e9d8a-0000-4000-8000-000000000001");
    let audit: Value = serde_json::from_str(&r.audit_json(serde_json::json!({"agent": true})).unwrap()).unwrap();
    assert_eq!((audit["event"].as_str(), audit["caller"]["agent"].as_bool()), (Some("secret.set.refused"), Some(true)));
    assert!(Refusal::new(Code::DecryptFailed, "x").audit_json(Value::Null).is_none());

    let k = Refusal::from_core(&Error::KeyringUnavailable { reason: "no file".into() }, Some(Scope::Global), Some("K"));
    assert_eq!(k.code(), Code::KeyringUnavailable);
    assert!(k.hint_text().is_some_and(|h| h.contains("secretgate.keyring_file")));
    assert_eq!(detail(&k)["scope"], "global");

    let m = Refusal::from_core(&Error::KeyMismatch { version: 2 }, None, None);
    assert_eq!((m.code(), m.code().sqlstate()), (Code::KeyMismatch, "SG004"));
    assert!(m.message().starts_with("KEY_MISMATCH: the keyring's key for version 2 is not the key"), "{}", m.message());
    assert_eq!(detail(&m)["version"], 2);
    assert!(m.hint_text().is_some_and(|h| h.contains("keyring check")));
}

#[test]
fn refusals_are_recognised_only_when_message_and_detail_agree() {
    let r = Refusal::new(Code::ConciergeSelfWriteBlocked, "r");
    let d = r.detail_json();
    assert_eq!(recognise_refusal(&r.message(), Some(&d)), Some(Code::ConciergeSelfWriteBlocked));
    assert_eq!(recognise_refusal("something else: r", Some(&d)), None);
    assert_eq!(recognise_refusal(&r.message(), Some("Failing row contains (x)")), None);
    assert_eq!(recognise_refusal(&r.message(), None), None);
    let other = Refusal::new(Code::InvalidModelId, "r").detail_json();
    assert_eq!(recognise_refusal(&r.message(), Some(&other)), None);
}

#[test]
fn sqlstate_packing_matches_postgres() {
    // ERRCODE_INTERNAL_ERROR = MAKE_SQLSTATE('X','X','0','0','0') = 2600; 42703 = 50360452.
    assert_eq!(pack_sqlstate("XX000"), Some(2600));
    assert_eq!(pack_sqlstate("42703"), Some(50_360_452));
    assert_eq!(pack_sqlstate("XX00"), None);
    assert_eq!(pack_sqlstate("xx000"), None);
}

proptest! {
    #[test]
    fn sqlstates_survive_packing(s in "[0-9A-Z]{5}") {
        prop_assert_eq!(unpack_sqlstate(pack_sqlstate(&s).unwrap()), s);
    }

    /// The rule, stated plainly, against the implementation on generated tables.
    #[test]
    fn routing_agrees_with_its_statement(
        rows in proptest::collection::vec(("[ab]{0,3}", "[pqr]", proptest::option::of("[xy]")), 0..8),
        model in "[ab]{0,4}",
        runtime in proptest::option::of("[xy]"),
    ) {
        let table: Vec<Route> = rows.iter().map(|(pattern, provider, runtime)| Route {
            pattern: pattern.clone(), provider: provider.clone(), runtime: runtime.clone(),
        }).collect();
        let got = route(&table, runtime.as_deref(), &model);
        let mut candidates: Vec<&Route> = table.iter()
            .filter(|r| model.starts_with(&r.pattern) && (r.runtime.is_none() || r.runtime == runtime))
            .collect();
        candidates.sort_by_key(|r| (r.runtime.is_none(), std::cmp::Reverse(r.pattern.len()), r.provider.clone()));
        prop_assert_eq!(got, candidates.first().map(|r| r.provider.as_str()));
    }

    #[test]
    fn refusal_details_are_json_with_the_code(reason in ".{0,40}", key in "[A-Z_]{0,12}") {
        let r = Refusal::new(Code::ForbiddenSecretKey, reason.clone()).with("key", key.as_str());
        let d: Value = serde_json::from_str(&r.detail_json()).unwrap();
        prop_assert_eq!(d["reason"].as_str(), Some(reason.as_str()));
        prop_assert_eq!(d["sqlstate"].as_str(), Some("SG105"));
        prop_assert_eq!(recognise_refusal(&r.message(), Some(&r.detail_json())), Some(Code::ForbiddenSecretKey));
    }
}

#[test]
fn external_by_kind_or_listed_runtime() {
    assert!(is_external(Some("external"), false));
    assert!(is_external(Some("workspace"), true));
    assert!(is_external(None, true));
    assert!(!is_external(Some("workspace"), false));
    assert!(!is_external(None, false));
}
