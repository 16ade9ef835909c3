//! Defense in depth in PostgreSQL: the roles the server and console work as, row-level security on
//! every table holding PHI, checked in the catalog and by raw SQL as the application role.

use carapace_tests::*;
use sqlx::{Connection, Row};

const PHI_TABLES: [&str; 3] = ["resources", "resource_versions", "audit_events"];
const APP_ROLES: [&str; 3] = ["carapace_app", "carapace_console", "carapace_audit_writer"];

#[tokio::test]
async fn the_catalog_holds_the_roles_and_row_level_security() {
    let stack = Stack::start().await.unwrap();
    let db = stack.db().await;
    for table in PHI_TABLES {
        let row = sqlx::query(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class
              WHERE relname = $1 AND relnamespace = 'public'::regnamespace",
        )
        .bind(table)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(
            row.get::<bool, _>(0) && row.get::<bool, _>(1),
            "{table}: row-level security enabled and forced"
        );
        let policies: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_policies WHERE tablename = $1")
                .bind(table)
                .fetch_one(&db)
                .await
                .unwrap();
        assert!(policies > 0, "{table} has policies");
    }
    for role in APP_ROLES {
        let row = sqlx::query(
            "SELECT rolsuper, rolbypassrls, rolcanlogin, rolcreaterole FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(
            !row.get::<bool, _>(0) && !row.get::<bool, _>(1) && !row.get::<bool, _>(3),
            "{role} is no superuser, does not bypass RLS, creates no roles"
        );
        let owned: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
              WHERE r.rolname = $1
             UNION ALL
             SELECT p.proname::text FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
              WHERE r.rolname = $1",
        )
        .bind(role)
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(owned.is_empty(), "{role} owns {owned:?}");
        for (table, privilege) in [
            ("audit_events", "UPDATE"),
            ("audit_events", "DELETE"),
            ("audit_events", "TRUNCATE"),
            ("resource_versions", "UPDATE"),
            ("resource_versions", "DELETE"),
            ("resources", "DELETE"),
        ] {
            let has: bool = sqlx::query_scalar("SELECT has_table_privilege($1, $2, $3)")
                .bind(role)
                .bind(table)
                .bind(privilege)
                .fetch_one(&db)
                .await
                .unwrap();
            assert!(!has, "{role} may {privilege} {table}");
        }
    }
    let writer_reads: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('carapace_audit_writer', 'audit_events', 'SELECT')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(!writer_reads, "the audit writer only appends");
    let unfixed: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.prosecdef AND p.pronamespace = 'public'::regnamespace
            AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) c
                             WHERE c LIKE 'search_path=%')",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(
        unfixed.is_empty(),
        "SECURITY DEFINER without search_path: {unfixed:?}"
    );
}

#[tokio::test]
async fn the_application_role_sees_no_phi_without_the_access_setting() {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    let mut ids = Vec::new();
    for family in ["Rowan", "Sever"] {
        let p = f
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": family}]}),
            )
            .await;
        assert_eq!(p.status, 201);
        let id = p.json()["id"].as_str().unwrap().to_string();
        let o = f
            .post(
                "Observation",
                &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "subject": {"reference": format!("Patient/{id}")}}),
            )
            .await;
        assert_eq!(o.status, 201);
        ids.push(id);
    }
    let mut conn = sqlx::PgConnection::connect(&stack.database_url)
        .await
        .unwrap();
    let count = |table: &str| format!("SELECT count(*) FROM {table}");
    let mut as_owner = Vec::new();
    for table in PHI_TABLES {
        let n: i64 = sqlx::query_scalar(&count(table))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        as_owner.push(n);
    }
    assert!(as_owner.iter().all(|n| *n > 0), "{as_owner:?}");

    // As the server's role, without the setting: no row of any PHI table.
    sqlx::query("SET ROLE carapace_app")
        .execute(&mut conn)
        .await
        .unwrap();
    for table in PHI_TABLES {
        let n: i64 = sqlx::query_scalar(&count(table))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} as carapace_app without the access setting");
    }
    // A query that forgets every filter still returns only the compartment the transaction is
    // set for, and the setting ends with the transaction.
    let a = format!("Patient/{}", ids[0]);
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(
        "SELECT set_config('carapace.reach', 'listed', true),
                set_config('carapace.compartments', $1, true),
                set_config('carapace.others', 'off', true)",
    )
    .bind(&a)
    .execute(&mut *tx)
    .await
    .unwrap();
    let seen: Vec<Option<String>> =
        sqlx::query_scalar("SELECT DISTINCT compartment FROM resources")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(seen, vec![Some(a.clone())]);
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(versions, 2, "A's Patient and Observation");
    tx.commit().await.unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, 0, "the setting did not outlive its transaction");

    // The trail cannot be changed by the application's role, whatever it sets.
    for sql in [
        "UPDATE audit_events SET outcome = '0'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DELETE FROM resource_versions",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        let code = err
            .as_database_error()
            .and_then(|d| d.code())
            .unwrap_or_default();
        assert_eq!(code, "42501", "{sql}: {err}");
    }
    // And the server, working as that role, still serves everything its callers may see.
    let read = f.get(&format!("Patient/{}", ids[1])).await;
    assert_eq!(read.status, 200);
}
