//! Issue 13, the gate reviewed as an attacker would: paths where "a caller touches only what it
//! may read, and a refusal answers exactly as a missing resource does" (README, "The access gate")
//! did not hold when this module was written. Each test is one finding, and fails until it is
//! fixed; the doc comment of each says where the fix belongs (one test marked "regression" held
//! and is kept as such).

use super::gate::{obs, world, World};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use carapace_core::access::Role;
use carapace_tests::*;

/// Every `next` cursor met walking a Bundle's pages from `first` (at most 20 pages), decoded from
/// the `_page` parameter of its `next` link (history and `$everything` cursors are base64url).
async fn next_cursors(w: &World, caller: &str, first: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut url = Some(w.stack.server.url(first));
    for _ in 0..20 {
        let Some(u) = url.take() else { break };
        let token = &w.callers.iter().find(|(c, _)| *c == caller).unwrap().1;
        let auth = format!("Bearer {token}");
        let r = http(
            "GET",
            &u,
            &[("Authorization", auth.as_str()), ("Accept", FHIR_JSON)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let next = r.json()["link"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str().map(str::to_string));
        if let Some(next) = &next {
            let query = next.split_once('?').map(|(_, q)| q).unwrap_or_default();
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                if k == "_page" {
                    if let Ok(bytes) = B64URL.decode(v.as_bytes()) {
                        out.push(String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
            }
        }
        url = next;
    }
    out
}

/// Finding: a label raised on a later version does not hide the earlier ones. The source EHR
/// relabels A's observation `V` (version 2); the practitioner's read of the resource is a 404 like
/// a missing one, yet `_history/1` hands out the same content whole, and type history lists it.
/// Fix: `store::reach` (`body_visible` / `finish_read` and `history`): decide every version of a
/// resource also on the current version's label (and compartments), not on its own alone.
#[tokio::test]
async fn a_label_raised_later_hides_the_earlier_versions() {
    let w = world().await;
    let id = w
        .system_writes("POST", "Observation", &obs(&w.a, None))
        .await;
    let mut raised = obs(&w.a, Some("V"));
    raised["id"] = json!(id);
    w.system_writes("PUT", &format!("Observation/{id}"), &raised)
        .await;
    let read = w.get("dr", &format!("Observation/{id}")).await;
    assert_eq!(
        read.status,
        404,
        "the current version is hidden: {}",
        read.text()
    );
    let vread = w.get("dr", &format!("Observation/{id}/_history/1")).await;
    assert_eq!(
        vread.status,
        404,
        "version 1 of a resource now labelled V: {}",
        vread.text()
    );
    let history = w.get("dr", "Observation/_history").await;
    assert_eq!(history.status, 200, "{}", history.text());
    assert!(
        !history.text().contains(&id),
        "type history lists a resource now labelled V: {}",
        history.text()
    );
}

/// Finding: a resource moved out of A's record (its subject corrected to B) stays readable, in
/// its old versions, to whoever may read A — and its history says where it went. The current
/// version is a 404 for the practitioner (B is closed to them); version 1 is handed out whole.
/// Fix: `store::reach` (`finish_read`, `history`): an old version is visible only when the
/// resource as it is now is (its current key scope and compartments), or the policy must say
/// otherwise in README "The access gate".
#[tokio::test]
async fn a_resource_moved_to_another_record_hides_its_old_versions() {
    let w = world().await;
    let id = w
        .system_writes("POST", "Observation", &obs(&w.a, None))
        .await;
    let b = w.b.clone();
    let mut moved = obs(&b, None);
    moved["id"] = json!(id);
    w.system_writes("PUT", &format!("Observation/{id}"), &moved)
        .await;
    assert_eq!(w.get("dr", &format!("Observation/{id}")).await.status, 404);
    let vread = w.get("dr", &format!("Observation/{id}/_history/1")).await;
    assert_eq!(
        vread.status,
        404,
        "version 1 of a resource now in B's record: {}",
        vread.text()
    );
}

/// Finding: history's paging cursor names versions the page left out. The newest version in A's
/// record is labelled V; the practitioner's first page of `Observation/_history?_count=1` is
/// empty, but its `next` link carries (base64url, in clear) the V-labelled resource's id, version
/// and lastUpdated. Fix: `Store::history` (`store.rs`): move the cursor only past versions handed
/// out, or seal the cursor like search cursors are (`seal_cursor`) and never name a hidden row.
#[tokio::test]
async fn history_cursors_name_no_hidden_version() {
    let w = world().await;
    w.system_writes("POST", "Observation", &obs(&w.a, None))
        .await;
    let hidden = w
        .system_writes("POST", "Observation", &obs(&w.a, Some("V")))
        .await;
    let cursors = next_cursors(&w, "dr", "Observation/_history?_count=1").await;
    for c in &cursors {
        assert!(
            !c.contains(&hidden),
            "a history cursor names the V-labelled {hidden}: {c}"
        );
    }
}

/// Finding: `$everything`'s paging cursor names resources the page left out. A's record holds two
/// V-labelled observations among three unlabelled ones; walking the practitioner's pages one at a
/// time, some `next` link carried (base64url `Type|id`, in clear) a V-labelled id.
/// Fix: `Store::everything_inner` (`store.rs`): set the cursor only from entries handed out (or
/// seal it), never from a row `body_visible` refused.
#[tokio::test]
async fn everything_cursors_name_no_hidden_resource() {
    let w = world().await;
    let mut hidden = Vec::new();
    for _ in 0..2 {
        hidden.push(
            w.system_writes("POST", "Observation", &obs(&w.a, Some("V")))
                .await,
        );
    }
    for _ in 0..3 {
        w.system_writes("POST", "Observation", &obs(&w.a, None))
            .await;
    }
    let first = format!("Patient/{}/$everything?_type=Observation&_count=1", w.a);
    let cursors = next_cursors(&w, "dr", &first).await;
    assert!(
        cursors.len() >= 2,
        "three visible observations, one a page: {cursors:?}"
    );
    for c in &cursors {
        for h in &hidden {
            assert!(
                !c.contains(h.as_str()),
                "an $everything cursor names the V-labelled {h}: {c}"
            );
        }
    }
}

/// Regression (holds today): a NUL in a history or `$everything` paging cursor (client-controlled,
/// plain base64url) is refused with 400 before it could reach PostgreSQL text (defect 4's class).
#[tokio::test]
async fn nul_in_a_paging_cursor_is_a_400() {
    let w = world().await;
    let history = B64URL.encode("2026-01-01T00:00:00.000000Z|Observation|a\0b|1");
    let everything = B64URL.encode("Observation|a\0b");
    for path in [
        format!("Observation/_history?_page={history}"),
        format!("_history?_page={history}"),
        format!("Patient/{}/$everything?_page={everything}", w.a),
    ] {
        let r = w.get("system", &path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{path}");
    }
}

/// Finding: a security label on a contained resource is stored and then ignored: R4 forbids it
/// (dom-5, "If a resource is contained in another resource, it SHALL NOT have a security label"),
/// and the gate reads only the container's `meta.security`, so an administrator (who never sees V)
/// reads the V-labelled contained observation whole.
/// Fix: `shared/src/fhir/validate.rs` (refuse dom-5 with 400), or `policy::Label::of` taking the
/// highest label of the container and everything it contains.
#[tokio::test]
async fn a_contained_resource_is_never_labelled_past_the_gate() {
    let w = world().await;
    let mut inner = obs(&w.a, Some("V"));
    inner["id"] = json!("secret");
    inner["valueString"] = json!("very restricted finding");
    let report = json!({"resourceType": "DiagnosticReport", "status": "final",
        "code": {"text": "panel"},
        "subject": {"reference": format!("Patient/{}", w.a)},
        "result": [{"reference": "#secret"}],
        "contained": [inner]});
    let r = w.send("system", "POST", "DiagnosticReport", &report).await;
    if r.status == 201 {
        let id = r.json()["id"].as_str().unwrap().to_string();
        let read = w.get("admin", &format!("DiagnosticReport/{id}")).await;
        assert!(
            !read.text().contains("very restricted finding"),
            "an administrator reads a V-labelled contained resource: {}",
            read.text()
        );
    } else {
        assert_eq!(r.status, 400, "{}", r.text());
    }
}

/// Finding: reading a resource in two patients' records is audited in the first one only. The
/// gate decides a Group listing A and B on both compartments, but its read's AuditEvent names A
/// alone (`patient_of(key scope)`), so B's "who accessed my record" never shows that B's
/// membership was read. Fix: `Store::finish_read` and `Store::search` (`store.rs`,
/// `store/search.rs`): one AuditEvent (or one patient entity) per compartment the resource handed
/// out is in (`fhir::reference::access_compartments`), as the gate decides.
#[tokio::test]
async fn reading_a_two_patient_resource_is_audited_in_both_records() {
    let w = world().await;
    let b = w.b.clone();
    let group = json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{}", w.a)}},
                   {"entity": {"reference": format!("Patient/{b}")}}]});
    let gid = w.system_writes("POST", "Group", &group).await;
    assert_eq!(w.get("system", &format!("Group/{gid}")).await.status, 200);
    assert_eq!(
        w.get("system", &format!("Group?member=Patient/{b}"))
            .await
            .status,
        200
    );
    let patient_b = w
        .stack
        .token("patient-b", Role::Patient, "patient/*.rs", Some(&b))
        .await
        .unwrap();
    let auth = format!("Bearer {patient_b}");
    let trail = http(
        "GET",
        &w.stack.server.url("AuditEvent?_count=100"),
        &[("Authorization", auth.as_str()), ("Accept", FHIR_JSON)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(trail.status, 200, "{}", trail.text());
    assert!(
        trail.text().contains(&format!("Group/{gid}")),
        "B's own audit trail does not show the read of the Group listing B: {}",
        trail.text()
    );
}

/// Finding (low): FHIR responses carrying PHI have no `Cache-Control`, so the browser SMART apps
/// CORS now admits may leave patient data in a browser's disk cache (the token and sign-in
/// endpoints already send `no-store`). Fix: one place every `/fhir` response passes
/// (`server/src/edge.rs` or `outcome.rs`): `Cache-Control: no-store` (or `private, no-cache`).
#[tokio::test]
async fn phi_responses_are_not_cacheable() {
    let w = world().await;
    let id = w
        .system_writes("POST", "Observation", &obs(&w.a, None))
        .await;
    for path in [
        format!("Observation/{id}"),
        format!("Observation?subject=Patient/{}", w.a),
        format!("Patient/{}/$everything", w.a),
    ] {
        let r = w.get("dr", &path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let cc = r.header("cache-control").unwrap_or_default();
        assert!(
            cc.contains("no-store") || cc.contains("private"),
            "{path}: Cache-Control {cc:?}"
        );
    }
}
