//! Bulk Data `$export` (IG 2.0.0) through the real server: system, Patient and Group exports, each
//! holding exactly what the caller's searches hold (scopes, consent, labels); `_type`,
//! `_typeFilter`, `_since` with `deleted`; files sealed on disk and handed only to the job's
//! owner; cancel, expiry, a job interrupted by a restart; the audit of kick-offs, downloads and
//! patients.

use carapace_core::access::Role;
use carapace_tests::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const CANARY: &str = "Zqxexportcanary";

struct World {
    stack: Stack,
    dir: tempfile::TempDir,
    a: String,
    b: String,
    group: String,
    /// An Observation about A performed by B: in both records, so not dr's to see.
    shared: String,
    dr: String,
}

async fn world(extra: Vec<(String, String)>) -> World {
    let (stack, dir) = Stack::start_exporting(extra).await.unwrap();
    let f = stack.fhir();
    let id = |r: HttpResponse| r.created_id();
    let r = f
        .put(
            "Practitioner/pr-1",
            &json!({"resourceType": "Practitioner", "id": "pr-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let a = id(f
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": CANARY, "given": ["Ann"]}],
                    "birthDate": "1961-04-02"}),
        )
        .await);
    let b = id(f
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Bravo"}]}),
        )
        .await);
    let obs = |p: &str, code: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": CANARY},
            "subject": {"reference": format!("Patient/{p}")}})
    };
    id(f.post("Observation", &obs(&a, "8867-4")).await);
    id(f.post("Observation", &obs(&a, "2339-0")).await);
    // Restricted: a practitioner's ceiling may hide it; their export must do as their search.
    let mut restricted = obs(&a, "8867-4");
    restricted["meta"] = json!({"security": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]});
    id(f.post("Observation", &restricted).await);
    let mut shared = obs(&a, "8867-4");
    shared["performer"] = json!([{"reference": format!("Patient/{b}")}]);
    let shared = id(f.post("Observation", &shared).await);
    id(f.post("Observation", &obs(&b, "8867-4")).await);
    id(f.post(
        "Condition",
        &json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{a}")}}),
    )
    .await);
    let group = id(f
        .post(
            "Group",
            &json!({"resourceType": "Group", "type": "person", "actual": true,
                    "member": [{"entity": {"reference": format!("Patient/{a}")}},
                               {"entity": {"reference": format!("Patient/{b}")}}]}),
        )
        .await);
    // The encryption test's canary patient, whose values must appear in no file on disk.
    id(f.post("Patient", &crate::encryption::canary_patient())
        .await);
    // dr sees A's record (a permit for every type) and of B only the Group (a permit for it).
    id(f.post("Consent", &permit_consent(&a, "Practitioner/pr-1"))
        .await);
    id(f.post(
        "Consent",
        &consent(&b, "permit", Some("Practitioner/pr-1"), &["Group"], None),
    )
    .await);
    stack.token_user("dr", "practitioner", Some("pr-1")).await;
    let dr = stack
        .token("dr", Role::Practitioner, "user/*.rs", None)
        .await
        .unwrap();
    World {
        stack,
        dir,
        a,
        b,
        group,
        shared,
        dr,
    }
}

/// A finished export: its manifest and each output file's resources, by type.
pub(crate) struct Exported {
    pub(crate) manifest: Value,
    pub(crate) status_url: String,
    pub(crate) files: Vec<(String, Vec<Value>)>,
}

impl Exported {
    fn ids(&self, resource_type: &str) -> BTreeSet<String> {
        self.files
            .iter()
            .filter(|(t, _)| t == resource_type)
            .flat_map(|(_, rs)| rs.iter().map(|r| r["id"].as_str().unwrap().to_string()))
            .collect()
    }

    fn all(&self) -> BTreeSet<String> {
        self.files
            .iter()
            .flat_map(|(_, rs)| rs.iter())
            .map(|r| {
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                )
            })
            .collect()
    }
}

async fn call(method: &str, url: &str, token: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str()), ("Accept", FHIR_JSON)];
    headers.extend_from_slice(extra);
    http(method, url, &headers, None).await.unwrap()
}

async fn kick_off(stack: &Stack, token: &str, path: &str) -> HttpResponse {
    call(
        "GET",
        &stack.server.url(path),
        token,
        &[("Prefer", "respond-async")],
    )
    .await
}

/// Poll the status URL until the manifest (at most 60 s).
async fn manifest(status_url: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = call("GET", status_url, token, &[]).await;
        match r.status {
            200 => return r.json(),
            202 => {
                assert!(r.header("x-progress").is_some());
                assert!(r.header("retry-after").is_some());
            }
            other => panic!("status {other}: {}", r.text()),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn export(stack: &Stack, token: &str, path: &str) -> Exported {
    let r = kick_off(stack, token, path).await;
    assert_eq!(r.status, 202, "{path}: {}", r.text());
    let status_url = r.header("content-location").unwrap();
    let manifest = manifest(&status_url, token).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["transactionTime"].is_string());
    let mut files = Vec::new();
    for out in manifest["output"].as_array().unwrap() {
        let r = call(
            "GET",
            out["url"].as_str().unwrap(),
            token,
            &[("Accept", "application/fhir+ndjson")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/fhir+ndjson")
        );
        let resources: Vec<Value> = r
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(resources.len() as u64, out["count"].as_u64().unwrap());
        for resource in &resources {
            assert_eq!(resource["resourceType"], out["type"]);
        }
        files.push((out["type"].as_str().unwrap().to_string(), resources));
    }
    Exported {
        manifest,
        status_url,
        files,
    }
}

/// The ids a search returns to `token` (one page of up to 1000).
async fn searched(stack: &Stack, token: &str, query: &str) -> BTreeSet<String> {
    let r = call("GET", &stack.server.url(query), token, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every file under the export directory (jobs, their runs), read raw.
fn files_on_disk(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            out.extend(files_on_disk(&entry.path()));
        } else {
            out.push(std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn exports_hold_exactly_what_the_callers_searches_hold() {
    let w = world(vec![]).await;
    let s = &w.stack;
    let system = s.server.token.clone().unwrap();

    // System level, `_type`: everything of those types, as the system client's searches.
    let all = export(s, &system, "$export?_type=Patient,Observation,Condition").await;
    assert_eq!(
        all.ids("Patient"),
        searched(s, &system, "Patient?_count=1000").await
    );
    assert_eq!(
        all.ids("Observation"),
        searched(s, &system, "Observation?_count=1000").await
    );
    assert!(all.ids("Observation").len() >= 3);
    assert!(all.ids("Group").is_empty() && all.ids("Consent").is_empty());
    assert!(all.manifest["error"].as_array().unwrap().is_empty());
    // Patients come first.
    assert_eq!(all.manifest["output"][0]["type"], "Patient");

    // `_typeFilter` through the search engine.
    let filtered = export(
        s,
        &system,
        "$export?_type=Observation&_typeFilter=Observation%3Fcode%3Dhttp://loinc.org%7C2339-0",
    )
    .await;
    assert_eq!(
        filtered.ids("Observation"),
        searched(s, &system, "Observation?code=http://loinc.org|2339-0").await
    );
    assert_eq!(filtered.ids("Observation").len(), 1);

    // `_elements`: cut down and tagged SUBSETTED.
    let cut = export(s, &system, "$export?_type=Patient&_elements=birthDate").await;
    for p in &cut.files[0].1 {
        assert!(p.get("name").is_none(), "{p}");
        assert_eq!(p["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    // A practitioner: consent and labels narrow their export exactly as their searches.
    let theirs = export(s, &w.dr, "$export?_type=Patient,Observation,Condition").await;
    for t in ["Patient", "Observation", "Condition"] {
        assert_eq!(
            theirs.ids(t),
            searched(s, &w.dr, &format!("{t}?_count=1000")).await,
            "{t}"
        );
    }
    assert_eq!(theirs.ids("Patient"), BTreeSet::from([w.a.clone()]));

    // includeAssociatedData=LatestProvenanceResources: for each exported resource, the latest
    // Provenance naming it.
    let target = searched(s, &system, "Observation?code=http://loinc.org|2339-0").await;
    let target = target.into_iter().next().unwrap();
    let provenance = |when: &str| {
        json!({"resourceType": "Provenance", "recorded": when,
               "target": [{"reference": format!("Observation/{target}")}],
               "agent": [{"who": {"reference": "Practitioner/pr-1"}}]})
    };
    let f = s.fhir();
    let older = f
        .post("Provenance", &provenance("2024-01-01T00:00:00Z"))
        .await;
    assert_eq!(older.status, 201, "{}", older.text());
    let newer = f
        .post("Provenance", &provenance("2024-02-01T00:00:00Z"))
        .await;
    let newer = newer.json()["id"].as_str().unwrap().to_string();
    let associated = export(
        s,
        &system,
        "$export?_type=Observation&includeAssociatedData=LatestProvenanceResources",
    )
    .await;
    assert_eq!(associated.ids("Provenance"), BTreeSet::from([newer]));
    assert!(associated.ids("Observation").contains(&target));

    // A patient: `Patient/$export` is exactly their compartment, and nothing else is theirs to
    // start.
    s.token_user("patient-a", "patient", None).await;
    let patient = s
        .token("patient-a", Role::Patient, "patient/*.rs", Some(&w.a))
        .await
        .unwrap();
    let own = export(s, &patient, "Patient/$export").await;
    // Their compartment as they may see it: what `$everything` gives them (a Group naming
    // another patient too is in A's compartment, but not A's to see).
    let everything = call(
        "GET",
        &s.server
            .url(&format!("Patient/{}/$everything?_count=1000", w.a)),
        &patient,
        &[],
    )
    .await;
    assert_eq!(everything.status, 200, "{}", everything.text());
    let record: BTreeSet<String> = everything.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(own.all(), record);
    for t in ["Observation", "Condition", "Consent"] {
        assert!(own.all().iter().any(|r| r.starts_with(t)), "{t}");
    }
    assert!(own.all().contains(&format!("Patient/{}", w.a)));
    assert!(!own.all().contains(&format!("Patient/{}", w.b)));
    for path in ["$export", &format!("Group/{}/$export", w.group)] {
        assert_eq!(kick_off(s, &patient, path).await.status, 403, "{path}");
    }

    // A Group: its members through the gate; the one dr may not see is left out, and said so.
    let cohort = export(s, &w.dr, &format!("Group/{}/$export", w.group)).await;
    assert_eq!(cohort.ids("Patient"), BTreeSet::from([w.a.clone()]));
    assert_eq!(
        cohort.manifest["extension"]["https://carapace.dev/fhir/bulk/members-left-out"],
        1
    );
    assert_eq!(cohort.manifest["error"].as_array().unwrap().len(), 1);
    let system_cohort = export(
        s,
        &system,
        &format!("Group/{}/$export?_type=Patient", w.group),
    )
    .await;
    assert_eq!(
        system_cohort.ids("Patient"),
        BTreeSet::from([w.a.clone(), w.b.clone()])
    );

    // Another caller's token: the status and the files are not found.
    let other = s
        .token("someone-else", Role::System, "system/*.rs", None)
        .await
        .unwrap();
    assert_eq!(call("GET", &all.status_url, &other, &[]).await.status, 404);
    let file = all.manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(call("GET", file, &other, &[]).await.status, 404);
    assert_eq!(call("GET", file, &w.dr, &[]).await.status, 404);
    assert_eq!(call("GET", file, "not-a-token", &[]).await.status, 401);
    // The same subject with a narrower token (a script's, a refreshed one) does not reach it.
    let narrow = s
        .token("dr", Role::Practitioner, "user/Patient.rs", None)
        .await
        .unwrap();
    assert_eq!(
        call("GET", &theirs.status_url, &narrow, &[]).await.status,
        404
    );
    assert_eq!(
        call("GET", &theirs.status_url, &w.dr, &[]).await.status,
        200
    );

    // POST: the patients in a Parameters body; parameters in its URL are refused.
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "patient", "valueReference": {"reference": format!("Patient/{}", w.b)}}]});
    let auth = format!("Bearer {system}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Accept", FHIR_JSON),
        ("Content-Type", FHIR_JSON),
        ("Prefer", "respond-async"),
    ];
    let r = http(
        "POST",
        &s.server.url("Patient/$export?_type=Patient"),
        &headers,
        Some(body.to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let r = http(
        "POST",
        &s.server.url("Patient/$export"),
        &headers,
        Some(body.to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let m = manifest(&r.header("content-location").unwrap(), &system).await;
    let types: Vec<&str> = m["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient", "Observation"]);
    assert_eq!(m["output"][0]["count"], 1);
    // B's own Observation and the one B performed on A: both in B's record.
    assert_eq!(m["output"][1]["count"], 2);

    // The files at rest are sealed: none of the encryption test's canaries, no JSON — though
    // the downloads hold them.
    assert!(all.files[0]
        .1
        .iter()
        .any(|p| p["name"][0]["family"] == crate::encryption::CANARIES[0]));
    let on_disk = files_on_disk(w.dir.path());
    assert!(on_disk.len() >= 8);
    for bytes in &on_disk {
        for canary in crate::encryption::CANARIES.iter().chain([&CANARY]) {
            assert!(
                !bytes.windows(canary.len()).any(|x| x == canary.as_bytes()),
                "{canary}"
            );
        }
        assert!(!bytes.windows(12).any(|x| x == b"resourceType"));
    }

    // Audit: each kick-off, each download, and every patient whose data a job wrote.
    let events = s.audit_events("subtype=export&_count=1000").await;
    assert!(events.iter().all(|e| e["type"]["code"] == "110106"));
    let job = all.status_url.rsplit('/').next().unwrap();
    let naming = |suffix: &str| {
        events
            .iter()
            .filter(|e| {
                e["entity"].as_array().into_iter().flatten().any(|x| {
                    x["what"]["reference"] == format!("urn:carapace:export:{job}{suffix}").as_str()
                })
            })
            .count()
    };
    // Kick-off + one event per patient (A, B and the canary patient).
    assert_eq!(naming(""), 1 + all.ids("Patient").len(), "{events:#?}");
    assert_eq!(all.ids("Patient").len(), 3);
    for out in all.manifest["output"].as_array().unwrap() {
        let name = out["url"].as_str().unwrap().rsplit('/').next().unwrap();
        assert_eq!(naming(&format!("/{name}")), 1, "{name}");
    }
    let a_events = s
        .audit_events(&format!("subtype=export&patient=Patient/{}", w.a))
        .await;
    assert!(
        a_events.len() >= 4,
        "A's record shows every job that wrote it"
    );
}

#[tokio::test]
async fn since_deleted_cancel_limits_and_expiry() {
    let w = world(vec![("CARAPACE_EXPORT_TTL".into(), "4".into())]).await;
    let s = &w.stack;
    let system = s.server.token.clone().unwrap();
    let f = s.fhir();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // After `since`: B renamed, one of A's observations deleted.
    let mut b = f.get(&format!("Patient/{}", w.b)).await.json();
    b["name"] = json!([{"family": "Bravo-Changed"}]);
    assert_eq!(f.put(&format!("Patient/{}", w.b), &b).await.status, 200);
    let gone = searched(s, &system, "Observation?code=http://loinc.org|2339-0").await;
    let gone = gone.into_iter().next().unwrap();
    assert_eq!(f.delete(&format!("Observation/{gone}")).await.status, 204);

    assert_eq!(
        f.delete(&format!("Observation/{}", w.shared)).await.status,
        204
    );
    // A deletion is listed only to whom its last version was visible: dr sees A's record, but
    // not what is in B's too.
    let theirs = export(
        s,
        &w.dr,
        &format!(
            "$export?_type=Observation&_since={}",
            since.replace('+', "%2B")
        ),
    )
    .await;
    let listed = call(
        "GET",
        theirs.manifest["deleted"][0]["url"].as_str().unwrap(),
        &w.dr,
        &[],
    )
    .await
    .text();
    assert!(listed.contains(&format!("Observation/{gone}")), "{listed}");
    assert!(!listed.contains(&w.shared), "{listed}");
    assert_eq!(listed.lines().count(), 1);

    let changed = export(
        s,
        &system,
        &format!(
            "$export?_type=Patient,Observation&_since={}",
            since.replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(changed.ids("Patient"), BTreeSet::from([w.b.clone()]));
    assert!(changed.ids("Observation").is_empty());
    let deleted = changed.manifest["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        deleted[0]["count"], 2,
        "the system client sees both deletions"
    );
    let r = call("GET", deleted[0]["url"].as_str().unwrap(), &system, &[]).await;
    let mut urls = BTreeSet::new();
    for line in r.text().lines() {
        let bundle: Value = serde_json::from_str(line).unwrap();
        assert_eq!(bundle["type"], "transaction");
        assert_eq!(bundle["entry"][0]["request"]["method"], "DELETE");
        urls.insert(
            bundle["entry"][0]["request"]["url"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        urls,
        BTreeSet::from([
            format!("Observation/{gone}"),
            format!("Observation/{}", w.shared)
        ])
    );

    // Refusals: no Prefer, unknown parameters (unless lenient), a bad _since.
    let r = call("GET", &s.server.url("$export"), &system, &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("respond-async"));
    for bad in [
        "$export?foo=1",
        "$export?_since=yesterday",
        "$export?_outputFormat=csv",
    ] {
        let r = kick_off(s, &system, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    let lenient = call(
        "GET",
        &s.server.url("$export?_type=Patient&foo=1"),
        &system,
        &[("Prefer", "respond-async, handling=lenient")],
    )
    .await;
    assert_eq!(lenient.status, 202);
    let m = manifest(&lenient.header("content-location").unwrap(), &system).await;
    let errors = call("GET", m["error"][0]["url"].as_str().unwrap(), &system, &[]).await;
    assert!(errors.text().contains("'foo'"), "{}", errors.text());

    // While a job cannot finish (its files cannot be registered), a second from the same client
    // is refused; DELETE cancels the running job, whose status is then not found.
    let db = s.db().await;
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE export_files IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let r = kick_off(s, &system, "$export?_type=Patient").await;
    assert_eq!(r.status, 202);
    let running = r.header("content-location").unwrap();
    let r = kick_off(s, &system, "$export?_type=Patient").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(call("GET", &running, &system, &[]).await.status, 202);
    assert_eq!(call("DELETE", &running, &system, &[]).await.status, 202);
    blocker.rollback().await.unwrap();
    assert_eq!(call("GET", &running, &system, &[]).await.status, 404);
    assert_eq!(call("DELETE", &running, &system, &[]).await.status, 404);

    // Expiry: files, their key and the job are gone within 30 s of the TTL.
    let file = changed.manifest["output"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(4 + 30);
    loop {
        let keys: i64 =
            sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE scope LIKE 'export/%'")
                .fetch_one(&db)
                .await
                .unwrap();
        if files_on_disk(w.dir.path()).is_empty() && keys == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "expired exports still on disk");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(call("GET", &file, &system, &[]).await.status, 404);
    assert_eq!(
        call("GET", &changed.status_url, &system, &[]).await.status,
        404
    );
}

#[tokio::test]
async fn a_job_interrupted_by_a_restart_runs_again_whole() {
    let mut w = world(vec![]).await;
    let system = w.stack.server.token.clone().unwrap();
    let db = w.stack.db().await;
    // The job writes its files but cannot register them: the server stops mid-job.
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE export_files IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let r = kick_off(&w.stack, &system, "$export?_type=Patient,Observation").await;
    assert_eq!(r.status, 202);
    let status = r.header("content-location").unwrap();
    let job = status.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(w.dir.path().join(&job).join("r1"))
        .map(|d| d.count() >= 2)
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "the job wrote no files");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stack.server.terminate().unwrap();
    blocker.rollback().await.unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM export_jobs WHERE id = $1")
        .bind(&job)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(state, "running", "the job was cut off while running");
    // Something half-written is left behind, as a crash would leave it.
    std::fs::write(
        w.dir
            .path()
            .join(&job)
            .join("r1")
            .join("Observation-9.ndjson.part"),
        b"x",
    )
    .unwrap();

    let before = w.stack.server.base.clone();
    w.stack.server.restart().await.unwrap();
    let status = status.replace(&before, &w.stack.server.base);
    let m = manifest(&status, &system).await;
    let counts: Vec<(String, u64)> = m["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["type"].as_str().unwrap().into(),
                o["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let observations = searched(&w.stack, &system, "Observation?_count=1000")
        .await
        .len() as u64;
    assert_eq!(
        counts,
        [
            ("Patient".to_string(), 3),
            ("Observation".to_string(), observations)
        ]
    );
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM export_jobs WHERE id = $1")
        .bind(&job)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    let runs: Vec<String> = std::fs::read_dir(w.dir.path().join(&job))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs, ["r2"], "the cut-off run's files are gone");
    let mut names: Vec<String> = std::fs::read_dir(w.dir.path().join(&job).join("r2"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["Observation-1.ndjson", "Patient-1.ndjson"]);
    for out in m["output"].as_array().unwrap() {
        let r = call("GET", out["url"].as_str().unwrap(), &system, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text().lines().count() as u64,
            out["count"].as_u64().unwrap()
        );
    }
}

/// A third-party client — plain HTTP as the Bulk Data IG's sample client, every NDJSON line
/// parsed by the published strict R4 models of `fhirclient` — completes a system export and a
/// patient's export of their own record.
#[tokio::test]
async fn a_published_strict_r4_client_completes_an_export() {
    let Ok(python) = std::env::var("CARAPACE_PYTHON_CLIENTS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CARAPACE_PYTHON_CLIENTS is unset (tests/run installs fhirclient)"
        );
        eprintln!("SKIPPED: set CARAPACE_PYTHON_CLIENTS (tests/run installs fhirclient)");
        return;
    };
    let w = world(vec![]).await;
    let s = &w.stack;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/bulk_export.py");
    s.token_user("patient-a", "patient", None).await;
    let patient = s
        .token("patient-a", Role::Patient, "patient/*.rs", Some(&w.a))
        .await
        .unwrap();
    let system = s.server.token.clone().unwrap();
    for (token, args, patients) in [
        (
            &system,
            vec!["--type", "Patient,Observation,Condition,Group"],
            3,
        ),
        (&patient, vec!["--level", "patient"], 1),
    ] {
        let base = s.server.base.clone();
        let mut command = std::process::Command::new(&python);
        command.arg(&script).arg(&base).arg(token).args(&args);
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["resources"]["Patient"], patients, "{report}");
        let total: u64 = report["resources"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(report["parsed"], total);
        assert!(report["resources"]["Observation"].as_u64().unwrap() >= 2);
    }
}
