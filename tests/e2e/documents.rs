//! Documents: Binary content sent and served raw (R4 `binary.html`), streamed and sealed in chunks,
//! its SHA-256 checked on every whole read, read under its securityContext's access, attached to
//! DocumentReferences with size and hash the server vouches for; a published client's upload and
//! download.

use carapace_core::access::Role;
use carapace_tests::*;
use sha2::Digest;

const PDF: &str = "application/pdf";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const DOCUMENT_CANARY: &str = "Zqxcanary discharge letter secret";

/// A PDF of `len` bytes that does not compress, with the canary text in its first bytes.
fn pdf(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n".to_vec();
    bytes.extend_from_slice(DOCUMENT_CANARY.as_bytes());
    bytes.extend(document_bytes(seed, 0, len.saturating_sub(bytes.len())));
    bytes.truncate(len);
    bytes
}

/// The 8-byte PNG signature and a little more: enough for a content type to mean something.
fn png(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(document_bytes(seed, 0, len - 8));
    bytes
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(bytes).to_vec()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Raw requests as one caller.
struct Caller<'a> {
    stack: &'a Stack,
    auth: String,
}

impl<'a> Caller<'a> {
    fn admin(stack: &'a Stack) -> Caller<'a> {
        Caller {
            stack,
            auth: stack.server.bearer(),
        }
    }

    fn with(stack: &'a Stack, token: &str) -> Caller<'a> {
        Caller {
            stack,
            auth: format!("Bearer {token}"),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> HttpResponse {
        let mut all = vec![("Authorization", self.auth.as_str())];
        all.extend_from_slice(headers);
        http(method, &self.stack.server.url(path), &all, body)
            .await
            .unwrap()
    }

    async fn upload(&self, content_type: &str, context: Option<&str>, bytes: &[u8]) -> String {
        let mut headers = vec![("Content-Type", content_type), ("Accept", FHIR_JSON)];
        if let Some(c) = context {
            headers.push(("X-Security-Context", c));
        }
        let r = self
            .send("POST", "Binary", &headers, Some(bytes.to_vec()))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.created_id()
    }

    async fn range(&self, path: &str, range: &str) -> HttpResponse {
        self.send("GET", path, &[("Range", range)], None).await
    }

    async fn get(&self, path: &str, accept: &str) -> HttpResponse {
        self.send("GET", path, &[("Accept", accept)], None).await
    }

    async fn download(&self, path: &str, extra: &[(&str, &str)]) -> Downloaded {
        let mut headers = vec![("Authorization", self.auth.as_str())];
        headers.extend_from_slice(extra);
        download_digest(&self.stack.server.url(path), &headers)
            .await
            .unwrap()
    }
}

async fn patient(stack: &Stack, family: &str) -> String {
    let r = stack
        .fhir()
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": family}]}),
        )
        .await;
    r.created_id()
}

/// Every unfinished or orphaned content and chunk row (there must be none after a refusal).
async fn content_rows(stack: &Stack) -> (i64, i64) {
    let db = stack.db().await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SELECT set_config('carapace.reach', 'all', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let contents: i64 = sqlx::query_scalar("SELECT count(*) FROM binary_contents")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM binary_chunks")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    (contents, chunks)
}

/// Change the stored chunks of `Binary/<id>` with `sql` (`$1` is the content's upload).
async fn tamper(stack: &Stack, id: &str, sql: &str) {
    let db = stack.db().await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SELECT set_config('carapace.reach', 'all', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let upload: uuid::Uuid = sqlx::query_scalar(
        "SELECT content FROM resource_versions WHERE resource_type = 'Binary' AND id = $1
          ORDER BY version_id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let changed = sqlx::query(sql)
        .bind(upload)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(changed.rows_affected() > 0, "{sql} changed nothing");
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn documents_are_sent_and_served_raw_in_sealed_chunks() {
    let stack = Stack::start().await.unwrap();
    let admin = Caller::admin(&stack);
    let pid = patient(&stack, "Documented").await;
    let context = format!("Patient/{pid}");

    // A PDF of two and a half chunks, raw.
    let letter = pdf(2_621_440 + 777, 1);
    let r = admin
        .send(
            "POST",
            "Binary",
            &[
                ("Content-Type", PDF),
                ("X-Security-Context", &context),
                ("Accept", FHIR_JSON),
            ],
            Some(letter.clone()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.created_id();
    let created = r.json();
    assert_eq!(created["contentType"], PDF);
    assert_eq!(created["securityContext"]["reference"], context.as_str());
    assert!(
        created.get("data").is_none(),
        "a raw create answers without the bytes"
    );
    assert!(
        created.get("extension").is_none(),
        "the Binary is as the client made it"
    );
    let sha1 = sha1_of(&letter);

    // Read raw: its own type, length, ETag; */* and no Accept too.
    for accept in [PDF, "*/*", "application/*"] {
        let raw = admin.get(&format!("Binary/{id}"), accept).await;
        assert_eq!(raw.status, 200, "{accept}");
        assert_eq!(raw.header("content-type").as_deref(), Some(PDF));
        assert_eq!(raw.header("etag").as_deref(), Some("W/\"1\""));
        assert_eq!(raw.header("content-length"), Some(letter.len().to_string()));
        assert_eq!(
            raw.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert!(raw.body == letter, "the bytes come back as sent ({accept})");
    }
    let no_accept = admin.send("GET", &format!("Binary/{id}"), &[], None).await;
    assert_eq!(no_accept.status, 200);
    assert!(no_accept.body == letter);
    let wrong = admin.get(&format!("Binary/{id}"), "image/png").await;
    assert_eq!(wrong.status, 406, "{}", wrong.text());
    assert!(wrong.text().contains("application/pdf"), "{}", wrong.text());

    // Ranges: across a chunk boundary, a suffix, open-ended, and outside.
    let cross = admin
        .send(
            "GET",
            &format!("Binary/{id}"),
            &[("Accept", PDF), ("Range", "bytes=1048570-1048600")],
            None,
        )
        .await;
    assert_eq!(cross.status, 206);
    assert!(cross.body == letter[1_048_570..=1_048_600]);
    assert_eq!(
        cross.header("content-range"),
        Some(format!("bytes 1048570-1048600/{}", letter.len()))
    );
    let suffix = admin.range(&format!("Binary/{id}"), "bytes=-100").await;
    assert_eq!(suffix.status, 206);
    assert!(suffix.body == letter[letter.len() - 100..]);
    let open = admin.range(&format!("Binary/{id}"), "bytes=2621440-").await;
    assert!(open.body == letter[2_621_440..]);
    let outside = admin
        .range(&format!("Binary/{id}"), &format!("bytes={}-", letter.len()))
        .await;
    assert_eq!(outside.status, 416);
    assert_eq!(
        outside.header("content-range"),
        Some(format!("bytes */{}", letter.len()))
    );

    // The FHIR-JSON form: the resource with its content as base64 data.
    let resource = admin.get(&format!("Binary/{id}"), FHIR_JSON).await;
    assert_eq!(resource.status, 200);
    assert_eq!(resource.json()["data"], b64(&letter));
    let formatted = admin.get(&format!("Binary/{id}?_format=json"), "*/*").await;
    assert_eq!(formatted.json()["data"], b64(&letter));

    // A PNG, updated raw; each version keeps its own bytes.
    let first = png(5_000, 2);
    let second = png(1_200_000, 3);
    let img = admin.upload("image/png", Some(&context), &first).await;
    let put = admin
        .send(
            "PUT",
            &format!("Binary/{img}"),
            &[
                ("Content-Type", "image/png"),
                ("X-Security-Context", &context),
                ("If-Match", "W/\"1\""),
            ],
            Some(second.clone()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["meta"]["versionId"], "2");
    let now = admin.get(&format!("Binary/{img}"), "image/png").await;
    assert!(now.body == second);
    assert_eq!(now.header("etag").as_deref(), Some("W/\"2\""));
    let then = admin
        .get(&format!("Binary/{img}/_history/1"), "image/png")
        .await;
    assert!(then.body == first);
    let stale = admin
        .send(
            "PUT",
            &format!("Binary/{img}"),
            &[
                ("Content-Type", "image/png"),
                ("X-Security-Context", &context),
                ("If-Match", "W/\"1\""),
            ],
            Some(first.clone()),
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text());

    // A FHIR-JSON Binary goes to the same chunks: read raw, it is its decoded data.
    let note = b"plain text note".to_vec();
    let json_binary = stack
        .fhir()
        .post(
            "Binary",
            &json!({"resourceType": "Binary", "contentType": "text/plain",
                    "securityContext": {"reference": context}, "data": b64(&note)}),
        )
        .await;
    assert_eq!(json_binary.status, 201, "{}", json_binary.text());
    let note_id = json_binary.created_id();
    let note_raw = admin.get(&format!("Binary/{note_id}"), "text/plain").await;
    assert!(note_raw.body == note);
    // Patching would drop the content: refused.
    let patch = admin
        .send(
            "PATCH",
            &format!("Binary/{note_id}"),
            &[("Content-Type", "application/json-patch+json")],
            Some(br#"[{"op":"replace","path":"/contentType","value":"text/html"}]"#.to_vec()),
        )
        .await;
    assert_eq!(patch.status, 400, "{}", patch.text());

    // A DocumentReference attaching it: size and hash filled in; wrong ones, or a Binary that is
    // not there, refused.
    let doc = |attachment: Value| {
        json!({"resourceType": "DocumentReference", "status": "current",
               "subject": {"reference": context},
               "content": [{"attachment": attachment}]})
    };
    let attached = stack
        .fhir()
        .post(
            "DocumentReference",
            &doc(json!({"contentType": PDF, "url": format!("Binary/{id}")})),
        )
        .await;
    assert_eq!(attached.status, 201, "{}", attached.text());
    let attachment = &attached.json()["content"][0]["attachment"];
    assert_eq!(attachment["size"], letter.len());
    assert_eq!(attachment["hash"], b64(&sha1));
    let versions = stack.stored_versions().await;
    for bad in [
        json!({"url": format!("Binary/{id}"), "size": 12}),
        json!({"url": format!("Binary/{id}"), "hash": b64(&[0u8; 20])}),
        json!({"url": "Binary/not-here"}),
    ] {
        let r = stack
            .fhir()
            .post("DocumentReference", &doc(bad.clone()))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    assert_eq!(stack.stored_versions().await, versions, "nothing written");

    // The document's bytes are nowhere in the clear: not in a dump, not in the cluster's files.
    let dump = stack.postgres.dump(&stack.database).unwrap();
    assert!(
        String::from_utf8_lossy(&dump).contains("binary_chunks"),
        "the dump is real"
    );
    assert!(
        !contains(&dump, DOCUMENT_CANARY.as_bytes()),
        "pg_dump holds the document"
    );
    let db = stack.db().await;
    sqlx::query("CHECKPOINT").execute(&db).await.unwrap();
    assert!(
        !directory_contains(stack.postgres.dir(), DOCUMENT_CANARY.as_bytes()),
        "the data directory holds the document"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Does any file under `dir` hold `needle`?
fn directory_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            directory_contains(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| contains(&bytes, needle))
        }
    })
}

fn sha1_of(bytes: &[u8]) -> Vec<u8> {
    // The test computes R4's Attachment.hash itself, with a tool of its own.
    let out = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    (0..20)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_tampered_reordered_or_truncated_content_is_never_served() {
    let stack = Stack::start().await.unwrap();
    let admin = Caller::admin(&stack);
    let pid = patient(&stack, "Tampered").await;
    let context = format!("Patient/{pid}");
    // Seven chunks: chunks are read four at a time and one is held back, so a failure in the
    // sixth comes after the response has begun.
    let letter = pdf(6 * 1_048_576 + 10, 4);
    let id = admin.upload(PDF, Some(&context), &letter).await;
    let whole = admin.download(&format!("Binary/{id}"), &[]).await;
    assert_eq!((whole.status, whole.cut_short), (200, false));
    assert_eq!(whole.sha256, sha256(&letter));

    // A bit flipped in a chunk: the stream stops before it; the JSON form is a 500.
    tamper(
        &stack,
        &id,
        "UPDATE binary_chunks SET sealed = overlay(sealed placing
             decode(lpad(to_hex(get_byte(sealed, 40) # 1), 2, '0'), 'hex') from 41 for 1)
          WHERE upload = $1 AND chunk = 5",
    )
    .await;
    let flipped = admin.download(&format!("Binary/{id}"), &[]).await;
    assert_eq!(flipped.status, 200, "the first chunk is sound, so it began");
    assert!(
        flipped.cut_short,
        "a flipped chunk must end the response early"
    );
    assert!(
        flipped.len < 5 * 1_048_576,
        "nothing from the flipped chunk on"
    );
    let json_form = admin.get(&format!("Binary/{id}"), FHIR_JSON).await;
    assert_eq!(json_form.status, 500, "{}", json_form.text());
    assert!(
        json_form.text().contains("integrity"),
        "{}",
        json_form.text()
    );
    let failures = stack.audit_events("outcome=8").await;
    assert!(
        failures
            .iter()
            .any(|e| e.to_string().contains(&format!("Binary/{id}"))),
        "the failed read is audited as a serious failure: {failures:?}"
    );

    // Two chunks swapped (each sound on its own): detected at the first out of place.
    let other = pdf(6 * 1_048_576 + 10, 5);
    let id2 = admin.upload(PDF, Some(&context), &other).await;
    tamper(
        &stack,
        &id2,
        "UPDATE binary_chunks a SET sealed = b.sealed FROM binary_chunks b
          WHERE a.upload = $1 AND b.upload = $1
            AND ((a.chunk = 4 AND b.chunk = 5) OR (a.chunk = 5 AND b.chunk = 4))",
    )
    .await;
    let swapped = admin.download(&format!("Binary/{id2}"), &[]).await;
    assert_eq!(swapped.status, 200);
    assert!(swapped.cut_short, "reordered chunks must not be served");
    assert_ne!(swapped.sha256, sha256(&other));

    // The last chunk cut off: refused, never a shorter document passed off as whole.
    let id3 = admin
        .upload(PDF, Some(&context), &pdf(2 * 1_048_576 + 5, 6))
        .await;
    tamper(
        &stack,
        &id3,
        "DELETE FROM binary_chunks WHERE upload = $1 AND chunk = 2",
    )
    .await;
    let truncated = admin.download(&format!("Binary/{id3}"), &[]).await;
    assert!(truncated.cut_short || truncated.status >= 500);
    // The same in a one-chunk document: refused before its first byte, with an OperationOutcome.
    let small = admin.upload(PDF, Some(&context), &pdf(50_000, 7)).await;
    tamper(
        &stack,
        &small,
        "UPDATE binary_chunks SET sealed = overlay(sealed placing '\\x00'::bytea from 30 for 1)
          WHERE upload = $1",
    )
    .await;
    let refused = admin.get(&format!("Binary/{small}"), PDF).await;
    assert_eq!(refused.status, 500);
    assert_eq!(refused.json()["resourceType"], "OperationOutcome");
    assert!(!refused.text().contains("Zqxcanary"));
}

#[tokio::test]
async fn a_binary_is_read_under_its_security_contexts_access() {
    let stack = Stack::start().await.unwrap();
    let admin = Caller::admin(&stack);
    let a = patient(&stack, "Alpha").await;
    let b = patient(&stack, "Beta").await;
    let of_a = admin
        .upload(PDF, Some(&format!("Patient/{a}")), &pdf(1000, 8))
        .await;
    let of_b = admin
        .upload(PDF, Some(&format!("Patient/{b}")), &pdf(1000, 9))
        .await;
    // A very restricted DocumentReference of A's, and a Binary belonging to it.
    let secret_doc = stack
        .fhir()
        .post(
            "DocumentReference",
            &json!({"resourceType": "DocumentReference", "status": "current",
                    "meta": {"security": [{"system": CONFIDENTIALITY, "code": "V"}]},
                    "subject": {"reference": format!("Patient/{a}")},
                    "content": [{"attachment": {"contentType": PDF}}]}),
        )
        .await
        .created_id();
    // Only A herself sees a V-labelled record (no system client does): her app attaches it.
    let mine = stack
        .token("patient-a", Role::Patient, "patient/*.cruds", Some(&a))
        .await
        .unwrap();
    let mine = Caller::with(&stack, &mine);
    let of_secret = mine
        .upload(
            PDF,
            Some(&format!("DocumentReference/{secret_doc}")),
            &pdf(1000, 10),
        )
        .await;
    let of_nobody = admin.upload(PDF, None, &pdf(1000, 11)).await;
    // It is sealed under A's key, as A's record is.
    let db = stack.db().await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SELECT set_config('carapace.reach', 'all', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let scope: String = sqlx::query_scalar(
        "SELECT k.scope FROM binary_contents c JOIN data_keys k ON k.id = c.dek_id
           JOIN resource_versions v ON v.content = c.upload WHERE v.id = $1",
    )
    .bind(&of_secret)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(scope, format!("Patient/{a}"));

    // A practitioner A consented to (ceiling R): A's document, not B's, not the V-labelled one's,
    // not one that belongs to nobody.
    stack.token_user("dr", "practitioner", Some("pr-1")).await;
    let practitioner = stack
        .fhir()
        .put(
            "Practitioner/pr-1",
            &json!({"resourceType": "Practitioner", "id": "pr-1"}),
        )
        .await;
    assert_eq!(practitioner.status, 201, "{}", practitioner.text());
    let consent = stack
        .fhir()
        .post("Consent", &permit_consent(&a, "Practitioner/pr-1"))
        .await;
    assert_eq!(consent.status, 201, "{}", consent.text());
    let dr = stack
        .token("dr", Role::Practitioner, "user/*.cruds", None)
        .await
        .unwrap();
    let dr = Caller::with(&stack, &dr);
    assert_eq!(dr.get(&format!("Binary/{of_a}"), PDF).await.status, 200);
    assert_eq!(
        dr.get(&format!("Binary/{of_a}"), FHIR_JSON).await.status,
        200
    );
    for hidden in [&of_b, &of_secret, &of_nobody] {
        for accept in [PDF, FHIR_JSON] {
            let r = dr.get(&format!("Binary/{hidden}"), accept).await;
            assert_eq!(r.status, 404, "{hidden} as {accept}: {}", r.text());
        }
    }
    // A's own app: hers, not B's.
    assert_eq!(
        mine.get(&format!("Binary/{of_secret}"), PDF).await.status,
        200
    );
    assert_eq!(mine.get(&format!("Binary/{of_a}"), PDF).await.status, 200);
    assert_eq!(mine.get(&format!("Binary/{of_b}"), PDF).await.status, 404);
    // Writing into B's record is refused to A's app.
    let r = mine
        .send(
            "POST",
            "Binary",
            &[
                ("Content-Type", PDF),
                ("X-Security-Context", &format!("Patient/{b}")),
            ],
            Some(pdf(100, 12)),
        )
        .await;
    assert!(matches!(r.status, 400 | 403 | 404), "{}", r.text());
    // A document stays in its record: a PUT without its securityContext (or naming another
    // record's) is refused, and it is still A's.
    for context in [None, Some(format!("Patient/{b}"))] {
        let mut headers = vec![("Content-Type", PDF)];
        if let Some(c) = &context {
            headers.push(("X-Security-Context", c));
        }
        let moved = admin
            .send(
                "PUT",
                &format!("Binary/{of_a}"),
                &headers,
                Some(pdf(100, 17)),
            )
            .await;
        assert_eq!(moved.status, 400, "{context:?}: {}", moved.text());
    }
    assert_eq!(mine.get(&format!("Binary/{of_a}"), PDF).await.status, 200);
    // An older version is read under what the document belongs to now: once A's app attaches it
    // to the V-labelled DocumentReference, the practitioner loses its history too.
    let kept = admin
        .upload(PDF, Some(&format!("Patient/{a}")), &pdf(1000, 18))
        .await;
    assert_eq!(
        dr.get(&format!("Binary/{kept}/_history/1"), PDF)
            .await
            .status,
        200
    );
    let moved = mine
        .send(
            "PUT",
            &format!("Binary/{kept}"),
            &[
                ("Content-Type", PDF),
                (
                    "X-Security-Context",
                    &format!("DocumentReference/{secret_doc}"),
                ),
            ],
            Some(pdf(1000, 19)),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    for path in [
        format!("Binary/{kept}"),
        format!("Binary/{kept}/_history/1"),
    ] {
        for accept in [PDF, FHIR_JSON] {
            assert_eq!(
                dr.get(&path, accept).await.status,
                404,
                "{path} as {accept}"
            );
        }
    }
    // Once A withdraws the consent, the practitioner loses the document with the record.
    let revoked = stack
        .fhir()
        .send(
            "PUT",
            &format!("Consent/{}", consent.created_id()),
            &{
                let mut c = consent.json();
                c["status"] = json!("inactive");
                c
            },
            &[],
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(dr.get(&format!("Binary/{of_a}"), PDF).await.status, 404);
}

#[tokio::test]
async fn content_limits_refuse_without_leaving_anything_behind() {
    let env = vec![
        ("CARAPACE_BINARY_LIMIT".to_string(), "200000".to_string()),
        ("CARAPACE_BODY_LIMIT".to_string(), "65536".to_string()),
    ];
    let stack = Stack::start_with(Bao::start_dev().await.unwrap(), env)
        .await
        .unwrap();
    let admin = Caller::admin(&stack);
    let pid = patient(&stack, "Limited").await;
    let context = format!("Patient/{pid}");
    let versions = stack.stored_versions().await;
    let too_big = admin
        .send(
            "POST",
            "Binary",
            &[("Content-Type", PDF), ("X-Security-Context", &context)],
            Some(pdf(200_001, 13)),
        )
        .await;
    assert_eq!(too_big.status, 413, "{}", too_big.text());
    assert!(too_big.text().contains("CARAPACE_BINARY_LIMIT"));
    assert_eq!(stack.stored_versions().await, versions);
    assert_eq!(content_rows(&stack).await, (0, 0), "no staged content left");
    // Within the Binary limit but past what the FHIR-JSON form carries: raw only.
    let id = admin.upload(PDF, Some(&context), &pdf(60_000, 14)).await;
    let json_form = admin.get(&format!("Binary/{id}"), FHIR_JSON).await;
    assert_eq!(json_form.status, 413, "{}", json_form.text());
    assert!(json_form.text().contains("Accept: application/pdf"));
    assert_eq!(
        admin.get(&format!("Binary/{id}"), PDF).await.body.len(),
        60_000
    );
    // A securityContext that names nothing: refused, nothing staged.
    let r = admin
        .send(
            "POST",
            "Binary",
            &[
                ("Content-Type", PDF),
                ("X-Security-Context", "Patient/nobody"),
            ],
            Some(pdf(1000, 15)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        content_rows(&stack).await.0,
        1,
        "only the stored document's content"
    );
    // A finished content never changes, even for the server's own database role.
    let db = stack.db().await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE carapace_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('carapace.reach', 'all', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rewrite = sqlx::query("UPDATE binary_contents SET size = 0, facts = NULL")
        .execute(&mut *tx)
        .await;
    let refused = rewrite.err().and_then(|e| e.into_database_error());
    assert_eq!(
        refused
            .and_then(|e| e.code().map(|c| c.to_string()))
            .as_deref(),
        Some("CH005")
    );
}

#[tokio::test]
async fn a_gigabyte_document_streams_in_and_out_in_bounded_memory() {
    let stack = Stack::start().await.unwrap();
    let pid = patient(&stack, "Large").await;
    let context = format!("Patient/{pid}");
    let auth = stack.server.bearer();
    let size: u64 = 1 << 30;
    let (r, sent) = upload_stream(
        "POST",
        &stack.server.url("Binary"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/dicom"),
            ("X-Security-Context", &context),
        ],
        size,
        16,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.created_id();
    let back = download_digest(
        &stack.server.url(&format!("Binary/{id}")),
        &[("Authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!((back.status, back.cut_short, back.len), (200, false, size));
    assert_eq!(back.sha256, sent, "the gigabyte comes back as it was sent");
    let pid = stack.server.pid().unwrap();
    let rss = peak_rss_mb(pid);
    assert!(
        rss < 300.0,
        "server peak RSS {rss:.0} MB for a 1 GiB document"
    );
}

#[tokio::test]
async fn a_published_client_uploads_and_downloads_a_document() {
    let stack = Stack::start().await.unwrap();
    let pid = patient(&stack, "Medplum").await;
    let token = stack
        .server
        .bearer()
        .trim_start_matches("Bearer ")
        .to_string();
    let (base, context) = (
        format!("{}/", stack.server.origin()),
        format!("Patient/{pid}"),
    );
    let report = carapace_tests::scripts::node(
        "medplum-binary.mjs",
        &[
            ("BASE_URL", &base),
            ("ACCESS_TOKEN", &token),
            ("SECURITY_CONTEXT", &context),
        ],
    )
    .await;
    assert_eq!(report["contentType"], PDF);
    assert_eq!(report["downloaded"], report["uploaded"]);
    assert_eq!(report["sha256Matches"], true);
    // What medplum uploaded is the server's: read back raw here too.
    let id = report["id"].as_str().unwrap();
    let raw = Caller::admin(&stack)
        .get(&format!("Binary/{id}"), PDF)
        .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body.len() as u64, report["uploaded"].as_u64().unwrap());
}
