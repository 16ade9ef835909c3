//! The consent screen: find a patient (by identifier or name, through the blind index), open
//! them, see their Consents, grant a practitioner or organisation access and revoke a Consent.
//! Everything here is FHIR work through the core, as the operator with the scopes it needs.

use super::{move_in, store_message, Step};
use crate::operator::scoped;
use crate::tui::app::{Action, FormKind, Modal};
use crate::tui::data::{grant_consent, ConsentRow, PatientRow};
use crate::tui::form::Form;
use crate::tui::text::inert;
use crate::tui::view::{boxed, table};
use carapace_core::core::Core;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::identity::users;
use carapace_core::search::query;
use carapace_core::store::Created;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::{Paragraph, Row};
use ratatui::Frame;
use serde_json::Value;

/// Keys of the screen: the status line shows the first few, the help overlay all.
pub const KEYS: &[(&str, &str)] = &[
    ("/", "find a patient"),
    ("Enter", "open the patient"),
    ("a", "grant access"),
    ("x", "revoke the consent (asks first)"),
    ("Tab", "patients ↔ consents"),
    ("j/k", "move"),
];

/// Scopes of the operator's work on this screen.
const PATIENT_SCOPES: [&str; 3] = [
    "user/Patient.rs",
    "user/Consent.cruds",
    "user/Practitioner.rs",
];

/// The consent screen: patients found, the one opened, their Consents.
#[derive(Debug, Default)]
pub struct ConsentView {
    pub query: String,
    pub patients: Vec<PatientRow>,
    pub selected_patient: usize,
    pub patient: Option<PatientRow>,
    pub consents: Vec<ConsentRow>,
    pub selected: usize,
    /// Keys move in the consent table (else in the patient list).
    pub in_consents: bool,
}

/// The find-a-patient form.
pub fn submit_find(form: &Form) -> Result<Step, String> {
    match form.value(0) {
        "" => Err("type a name or an identifier".into()),
        q => Ok(Step::Do(Action::FindPatients(q.to_string()))),
    }
}

/// The grant form for `patient`: who, which records, until when.
pub fn submit_grant(patient: &str, form: &Form) -> Result<Step, String> {
    let actor = form.value(0).to_string();
    if actor.is_empty() {
        return Err("who: a user name, or Practitioner/<id>, Organization/<id>, PractitionerRole/<id>, CareTeam/<id>".into());
    }
    let mut classes = Vec::new();
    for c in form.value(1).split([',', ' ']).filter(|c| !c.is_empty()) {
        ResourceType::parse(c).ok_or(format!("records: {c} is not a resource type"))?;
        classes.push(c.to_string());
    }
    let end = match form.value(2) {
        "" => None,
        e => {
            chrono::NaiveDate::parse_from_str(e, "%Y-%m-%d")
                .map_err(|_| "until: a date YYYY-MM-DD, or empty".to_string())?;
            Some(e.to_string())
        }
    };
    Ok(Step::Do(Action::Grant {
        patient: patient.to_string(),
        actor,
        classes,
        end,
    }))
}

impl ConsentView {
    /// A key on this screen (`None`: not one of its keys).
    pub fn key(&mut self, key: KeyEvent) -> Option<Step> {
        if self.in_consents {
            if move_in(&mut self.selected, self.consents.len(), key.code) {
                return Some(Step::Stay);
            }
        } else if move_in(&mut self.selected_patient, self.patients.len(), key.code) {
            return Some(Step::Stay);
        }
        match key.code {
            KeyCode::Char('/') => Some(Step::form(
                FormKind::FindPatient,
                Form::new("Find a patient", &[("name or identifier", false)]).with(0, &self.query),
            )),
            KeyCode::Tab => {
                self.in_consents = !self.in_consents && self.patient.is_some();
                Some(Step::Stay)
            }
            KeyCode::Enter if !self.in_consents => Some(
                self.patients
                    .get(self.selected_patient)
                    .map_or(Step::Stay, |p| Step::Do(Action::OpenPatient(p.id.clone()))),
            ),
            KeyCode::Char('a') => {
                let patient = self.patient.as_ref()?;
                Some(Step::form(
                    FormKind::Grant(patient.id.clone()),
                    Form::new(
                        &format!("Grant access to {}", inert(&patient.name, 40)),
                        &[("who", false), ("records", false), ("until", false)],
                    )
                    .hint("who: a user name or Practitioner/<id>, Organization/<id> · records: resource types, empty for all · until: YYYY-MM-DD, empty for no end"),
                ))
            }
            KeyCode::Char('x') if self.in_consents => {
                let c = self.consents.get(self.selected)?;
                if c.status != "active" {
                    return Some(Step::Stay);
                }
                let text = format!(
                    "Revoke consent {} ({} for {})?",
                    inert(&c.id, 40),
                    c.effect,
                    inert(&c.who, 40)
                );
                Some(Step::confirm(text, Action::RevokeConsent(c.id.clone())))
            }
            _ => None,
        }
    }

    /// Patients matching `q`, by identifier (system|value or a bare value) then by name: a new
    /// search, nothing opened.
    pub async fn find(&mut self, q: String, core: &Core, operator: &str) {
        let ctx = scoped(operator, &PATIENT_SCOPES);
        let mut found: Vec<PatientRow> = Vec::new();
        for param in ["identifier", "name"] {
            let pairs = [
                (param.to_string(), q.clone()),
                ("_count".into(), "50".into()),
            ];
            let Some(Ok(query)) =
                ResourceType::parse("Patient").map(|t| query::parse(t, &pairs, false))
            else {
                continue;
            };
            match core.store.search(&ctx, &query).await {
                Ok(result) => {
                    for r in result.matches {
                        if found.iter().all(|p| p.id != r.id) {
                            let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                            found.push(PatientRow::from_resource(&r.id, &body));
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "patient search failed"),
            }
        }
        *self = ConsentView {
            query: q,
            patients: found,
            ..ConsentView::default()
        };
    }

    /// Open a patient found: their Consents, with the keys in the consent table.
    pub async fn open(&mut self, id: &str, core: &Core, operator: &str) {
        self.patient = self.patients.iter().find(|p| p.id == id).cloned();
        self.in_consents = true;
        self.selected = 0;
        self.load(core, operator).await;
    }

    /// The Consents of the patient opened, if any.
    pub async fn load(&mut self, core: &Core, operator: &str) {
        let Some(patient) = self.patient.clone() else {
            return;
        };
        let ctx = scoped(operator, &PATIENT_SCOPES);
        let pairs = [
            ("patient".to_string(), format!("Patient/{}", patient.id)),
            ("_count".into(), "100".into()),
        ];
        let Some(consent) = ResourceType::parse("Consent") else {
            return;
        };
        let rows = match query::parse(consent, &pairs, false) {
            Ok(query) => match core.store.search(&ctx, &query).await {
                Ok(result) => result
                    .matches
                    .iter()
                    .map(|r| {
                        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        ConsentRow::from_resource(&r.id, &body)
                    })
                    .collect(),
                Err(e) => {
                    tracing::error!(error = %e, "consent search failed");
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        self.consents = rows;
        self.selected = self.selected.min(self.consents.len().saturating_sub(1));
    }

    /// Grant `actor` access to `patient`'s record (a refusal before the store is audited here;
    /// the store audits what reaches it): the result as a message, the Consents loaded again.
    pub async fn grant(
        &mut self,
        core: &Core,
        operator: &str,
        patient: &str,
        actor: &str,
        classes: &[String],
        end: Option<&str>,
    ) -> Modal {
        let result = write_grant(core, operator, patient, actor, classes, end).await;
        if let Err(refused) = &result {
            if !refused.starts_with("store: ") {
                let what = format!("consent-grant:Patient/{patient}");
                if let Err(e) = core
                    .store
                    .record_admin(&scoped(operator, &[]), &what, false)
                    .await
                {
                    tracing::error!(error = %e, "could not audit a refused grant");
                }
            }
        }
        let message = match result {
            Ok((id, actor)) => format!(
                "Consent/{id} written: {} may now see this record.",
                inert(&actor, 60)
            ),
            Err(e) => format!("Not granted: {e}"),
        };
        self.load(core, operator).await;
        Modal::Message(message)
    }

    /// Make Consent `id` inactive: the result as a message, the Consents loaded again.
    pub async fn revoke(&mut self, core: &Core, operator: &str, id: &str) -> Modal {
        let message = match revoke_consent(core, operator, id).await {
            Ok(()) => format!("Consent/{id} is now inactive; access ends with it."),
            Err(e) => format!("Not revoked: {e}"),
        };
        self.load(core, operator).await;
        Modal::Message(message)
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        // Patients above, their consents below: the consent table needs the width.
        let [left, right] = Layout::vertical([
            Constraint::Length((self.patients.len().clamp(1, 8) + 3) as u16),
            Constraint::Min(4),
        ])
        .areas(area);
        let rows: Vec<Row> = self
            .patients
            .iter()
            .map(|p| {
                Row::new(vec![
                    inert(&p.name, 60),
                    inert(&p.birth, 10),
                    inert(&p.identifier, 40),
                ])
            })
            .collect();
        let title = if self.query.is_empty() {
            "Patients: / to find".to_string()
        } else {
            format!(
                "Patients '{}' ({})",
                inert(&self.query, 20),
                self.patients.len()
            )
        };
        table(
            f,
            left,
            title,
            &["NAME", "BORN", "IDENTIFIER"],
            &[
                Constraint::Min(20),
                Constraint::Length(10),
                Constraint::Length(30),
            ],
            rows,
            (!self.patients.is_empty() && !self.in_consents).then_some(self.selected_patient),
        );
        let Some(patient) = &self.patient else {
            f.render_widget(
                Paragraph::new("Find a patient with /, open them with Enter.")
                    .block(boxed("Consents")),
                right,
            );
            return;
        };
        let rows: Vec<Row> = self
            .consents
            .iter()
            .map(|r| {
                Row::new(vec![
                    inert(&r.id, 8),
                    inert(&r.status, 9),
                    inert(&r.effect, 9),
                    inert(&r.who, 40),
                    inert(&r.what, 30),
                    inert(&r.period, 25),
                    inert(&r.purpose, 12),
                ])
            })
            .collect();
        table(
            f,
            right,
            format!(
                "Consents of {} (Patient/{})",
                inert(&patient.name, 30),
                inert(&patient.id, 40)
            ),
            &["ID", "STATUS", "EFFECT", "WHO", "WHAT", "PERIOD", "PURPOSE"],
            &[
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Min(16),
                Constraint::Length(20),
                Constraint::Length(23),
                Constraint::Length(7),
            ],
            rows,
            (!self.consents.is_empty() && self.in_consents).then_some(self.selected),
        );
    }
}

/// Write the granting Consent: its id and the actor it names (a user name resolved to their
/// Practitioner), or why not (`store: ` when the store refused it).
async fn write_grant(
    core: &Core,
    operator: &str,
    patient: &str,
    actor: &str,
    classes: &[String],
    end: Option<&str>,
) -> Result<(String, String), String> {
    let actor = if actor.contains('/') {
        let kind = actor.split('/').next().unwrap_or_default();
        if ![
            "Practitioner",
            "Organization",
            "PractitionerRole",
            "CareTeam",
        ]
        .contains(&kind)
        {
            return Err("who: Practitioner/, Organization/, PractitionerRole/ or CareTeam/".into());
        }
        actor.to_string()
    } else {
        let user = users::find(&core.store, actor)
            .await
            .map_err(|_| format!("no user '{}'", inert(actor, 32)))?;
        let id = user.practitioner_id.ok_or(format!(
            "'{}' is not linked to a Practitioner",
            inert(actor, 32)
        ))?;
        format!("Practitioner/{id}")
    };
    let today = core.store.now().format("%Y-%m-%d").to_string();
    let body = grant_consent(patient, &actor, classes, end, &today);
    let consent = ResourceType::parse("Consent").ok_or("no Consent type")?;
    match core
        .store
        .create(&scoped(operator, &PATIENT_SCOPES), consent, body, None)
        .await
    {
        Ok(Created::New(r) | Created::Existing(r)) => Ok((r.id, actor)),
        Err(e) => Err(format!("store: {}", store_message(&e))),
    }
}

async fn revoke_consent(core: &Core, operator: &str, id: &str) -> Result<(), String> {
    let ctx = scoped(operator, &PATIENT_SCOPES);
    let consent = ResourceType::parse("Consent").ok_or("no Consent type")?;
    let id = ResourceId::parse(id).map_err(|e| e.to_string())?;
    let stored = core
        .store
        .read(&ctx, consent, &id)
        .await
        .map_err(|e| store_message(&e))?;
    let mut body: Value = serde_json::from_slice(&stored.body).map_err(|e| e.to_string())?;
    body["status"] = "inactive".into();
    core.store
        .update(&ctx, consent, &id, body, Some(stored.version_id))
        .await
        .map(|_| ())
        .map_err(|e| store_message(&e))
}
