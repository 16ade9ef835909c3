//! Running a job: which types and patients, one snapshot read through the gate, the files, and
//! one AuditEvent for every patient whose data the job wrote.

use super::files::FileSet;
use super::jobs::Claimed;
use super::request::{in_patient_compartment, Level};
use super::{ExportError, Exporter, HEARTBEAT_SECONDS};
use crate::fhir::ResourceType;
use crate::store::export::{Patients, ReadError, Slice};
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a run ended, when not with a manifest.
enum Stop {
    Cancelled,
    /// The job cannot run as asked (its Group is gone, its account locked): fixed words.
    Refused(&'static str),
    Failed(ExportError),
}

impl From<ExportError> for Stop {
    fn from(e: ExportError) -> Stop {
        Stop::Failed(e)
    }
}

/// Shared with the heartbeat.
#[derive(Default)]
struct Progress {
    resources: AtomicU64,
    bytes: AtomicU64,
    cancelled: AtomicBool,
    current: Mutex<String>,
}

struct Written {
    files: Vec<super::ManifestFile>,
    transaction_time: chrono::DateTime<chrono::Utc>,
    members_left_out: Option<i32>,
    patients: BTreeSet<String>,
}

impl Exporter {
    /// Claim and run jobs for the life of the process, `concurrent` at a time.
    pub(super) async fn run_jobs(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.config.concurrent.max(1)));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            match self.claim().await {
                Ok(Some(job)) => {
                    let me = self.clone();
                    let task = tokio::spawn(async move {
                        me.run(job).await;
                        drop(permit);
                    });
                    self.track(task.abort_handle());
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(HEARTBEAT_SECONDS)) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e.for_log(), "claiming an export job failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        }
    }

    async fn run(&self, job: Claimed) {
        let (id, attempt) = (job.id.clone(), job.attempts);
        let waited = self.store.now() - job.created_at;
        let refused = if attempt > super::MAX_ATTEMPTS {
            // Started and cut off (a crash, a restart) too often: it is not started again.
            Some("the export was interrupted too many times")
        } else if waited > chrono::Duration::seconds(super::MAX_WAIT_SECONDS) {
            Some("the export waited too long to start; start it again")
        } else {
            None
        };
        if let Some(words) = refused {
            if let Err(e) = self.remove_files(&id) {
                tracing::warn!(job = %id, error = %e, "removing an abandoned export's files failed");
            }
            if let Err(e) = self.fail(&id, attempt, words, false).await {
                tracing::warn!(job = %id, error = %e, "recording an export's end failed");
            }
            return;
        }
        tracing::info!(job = %id, attempt, "export started");
        let progress = Arc::new(Progress::default());
        // The heartbeat goes on until the job's end is recorded (a completing transaction may wait
        // on locks), and stops the job when its row is no longer this run's.
        let beat = {
            let (store_id, progress) = (id.clone(), progress.clone());
            let me = self.clone_handle();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(HEARTBEAT_SECONDS)).await;
                    let text = progress
                        .current
                        .lock()
                        .map(|t| t.clone())
                        .unwrap_or_default();
                    let resources = progress.resources.load(Ordering::Relaxed);
                    let bytes = progress.bytes.load(Ordering::Relaxed);
                    match me
                        .heartbeat(
                            &store_id,
                            attempt,
                            &text,
                            i64::try_from(resources).unwrap_or(i64::MAX),
                            i64::try_from(bytes).unwrap_or(i64::MAX),
                        )
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            progress.cancelled.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "export heartbeat failed"),
                    }
                }
            })
        };
        self.track(beat.abort_handle());
        // Whatever an earlier run of the job left is removed; this run writes in a directory
        // of its own.
        let result = match self.remove_earlier_runs(&id, attempt) {
            Ok(()) => self.write(&job, &progress).await,
            Err(e) => Err(Stop::Failed(e.into())),
        };
        let outcome = match result {
            Ok(written) => {
                let patients: Vec<Option<String>> =
                    written.patients.iter().cloned().map(Some).collect();
                // One event per patient whose data the job wrote, naming the job, recorded before
                // the job completes: a job whose audit fails never offers its files.
                match self
                    .store
                    .audit_export(
                        &job.ctx,
                        &format!("urn:carapace:export:{id}"),
                        &patients,
                        true,
                    )
                    .await
                {
                    Err(e) => Stop::Failed(e.into()),
                    Ok(()) => match self
                        .finish(
                            &id,
                            attempt,
                            &written.files,
                            written.transaction_time,
                            written.members_left_out,
                        )
                        .await
                    {
                        Ok(true) => {
                            beat.abort();
                            tracing::info!(job = %id, files = written.files.len(), patients = patients.len(), "export complete");
                            return;
                        }
                        Ok(false) => Stop::Cancelled,
                        Err(e) => Stop::Failed(e),
                    },
                }
            }
            Err(stop) => stop,
        };
        beat.abort();
        if let Err(e) = self.remove_run_files(&id, attempt) {
            tracing::warn!(job = %id, error = %e, "removing a stopped export's files failed");
        }
        let ended = match outcome {
            Stop::Cancelled => {
                tracing::info!(job = %id, "export stopped (cancelled, or taken over)");
                Ok(())
            }
            Stop::Refused(words) => self.fail(&id, attempt, words, false).await,
            Stop::Failed(e) => {
                tracing::error!(job = %id, error = %e.for_log(), "export failed");
                let again = !Self::max_attempts_reached(attempt);
                self.fail(&id, attempt, "the export failed on the server", again)
                    .await
            }
        };
        if let Err(e) = ended {
            tracing::warn!(job = %id, error = %e, "recording an export's end failed");
        }
    }

    /// Remove the directories of a job's runs before `attempt`.
    fn remove_earlier_runs(&self, id: &str, attempt: i32) -> std::io::Result<()> {
        for earlier in 1..attempt {
            self.remove_run_files(id, earlier)?;
        }
        Ok(())
    }

    /// A handle for the heartbeat task (which ends with its job: it is aborted, or returns).
    fn clone_handle(&self) -> Arc<Exporter> {
        Arc::new(Exporter {
            store: self.store.clone(),
            config: self.config.clone(),
            wake: tokio::sync::Notify::new(),
            tasks: Default::default(),
            downloads: self.downloads.clone(),
        })
    }

    async fn write(&self, job: &Claimed, progress: &Progress) -> Result<Written, Stop> {
        if !self.still_allowed(&job.ctx).await? {
            return Err(Stop::Refused(
                "the account or client that started this export is locked, disabled or changed",
            ));
        }
        let request = &job.sealed.request;
        let dek = self
            .store
            .export_key(&job.id, false)
            .await
            .map_err(ExportError::from)?;
        let mut files = FileSet::create(
            self.run_dir(&job.id, job.attempts),
            &format!("{}/r{}", job.id, job.attempts),
            &dek,
            self.config.file_bytes,
        )
        .map_err(ExportError::from)?;
        let mut reader = self
            .store
            .export_reader(&job.ctx)
            .await
            .map_err(ExportError::from)?;
        let mut warnings: Vec<String> = request.ignored.clone();
        // Whose records: everyone, every patient, or some (a `patient` list, a Group's members,
        // a patient's own record), each through the gate.
        let mut members_left_out = None;
        let chosen: Option<Vec<String>> = match &request.level {
            Level::System => None,
            Level::Patient if request.patients.is_empty() => None,
            Level::Patient => {
                let visible = reader
                    .visible_patients(&request.patients)
                    .await
                    .map_err(ExportError::from)?;
                let left = request.patients.len() - visible.len();
                if left > 0 {
                    warnings.push(format!(
                        "{left} of the patients asked for are not visible to this client and were left out"
                    ));
                }
                Some(visible)
            }
            Level::Group(group) => {
                let Some(members) = reader
                    .group_members(group)
                    .await
                    .map_err(ExportError::from)?
                else {
                    return Err(Stop::Refused(
                        "the Group of this export is gone or not visible",
                    ));
                };
                let mut visible = reader
                    .visible_patients(&members)
                    .await
                    .map_err(ExportError::from)?;
                let left = members.len() - visible.len();
                members_left_out = Some(i32::try_from(left).unwrap_or(i32::MAX));
                if left > 0 {
                    warnings.push(format!(
                        "{left} of the Group's {} members are not visible to this client and were left out",
                        members.len()
                    ));
                }
                if !request.patients.is_empty() {
                    let asked: HashSet<&String> = request.patients.iter().collect();
                    visible.retain(|p| asked.contains(p));
                }
                Some(visible)
            }
        };
        let patients = match (&request.level, &chosen) {
            (_, Some(ids)) => Patients::Only(ids),
            (Level::System, None) => Patients::Any,
            (_, None) => Patients::InSome,
        };
        let present = reader
            .types_present(request.since.is_some())
            .await
            .map_err(ExportError::from)?;
        let mut types: Vec<ResourceType> = match &request.types {
            Some(names) => names
                .iter()
                .filter_map(|n| ResourceType::parse(n))
                .collect(),
            None => present.clone(),
        };
        if request.level != Level::System {
            types.retain(|t| in_patient_compartment(t.as_str()));
        }
        // Patients first (a loader creates them before what refers to them), then by name.
        types.sort_by_key(|t| (t.as_str() != "Patient", t.as_str()));
        let mut written_patients = BTreeSet::new();
        let cancelled = || {
            progress
                .cancelled
                .load(Ordering::Relaxed)
                .then(|| std::io::Error::other("cancelled"))
        };
        let stop = |e: ReadError| match e {
            _ if progress.cancelled.load(Ordering::Relaxed) => Stop::Cancelled,
            ReadError::Store(e) => Stop::Failed(e.into()),
            ReadError::Sink(e) => Stop::Failed(e.into()),
        };
        let mut exported_provenance = false;
        for &rt in &types {
            if !present.contains(&rt) {
                continue;
            }
            if let Ok(mut text) = progress.current.lock() {
                *text = format!("{rt}");
            }
            let filters = request.filters_of(rt).map_err(ExportError::from)?;
            let slice = Slice {
                resource_type: rt,
                filters: &filters,
                since: request.since,
                patients,
            };
            let elements = request.elements_of(rt.as_str());
            exported_provenance |= rt.as_str() == "Provenance" && filters.is_empty();
            reader
                .each_resource(&slice, |resource, compartments| {
                    if let Some(e) = cancelled() {
                        return Err(e);
                    }
                    for p in compartments.into_iter().flatten() {
                        if !written_patients.contains(&p) {
                            written_patients.insert(p);
                        }
                    }
                    match &elements {
                        None => files.line("output", rt.as_str(), &resource.body)?,
                        Some(elements) => {
                            let mut doc: serde_json::Value = serde_json::from_slice(&resource.body)
                                .map_err(|_| std::io::Error::other("stored body is not JSON"))?;
                            crate::search::shape(
                                &mut doc,
                                crate::search::query::Summary::None,
                                Some(elements),
                            );
                            files.line("output", rt.as_str(), &serde_json::to_vec(&doc)?)?;
                        }
                    }
                    progress.resources.fetch_add(1, Ordering::Relaxed);
                    progress.bytes.store(files.bytes, Ordering::Relaxed);
                    Ok(())
                })
                .await
                .map_err(stop)?;
            if let Some(since) = request.since {
                files.close().map_err(ExportError::from)?;
                reader
                    .each_deleted(&slice, since, |reference| {
                        let bundle = json!({"resourceType": "Bundle", "type": "transaction",
                            "entry": [{"request": {"method": "DELETE", "url": reference}}]});
                        files.line("deleted", "Bundle", &serde_json::to_vec(&bundle)?)
                    })
                    .await
                    .map_err(stop)?;
            }
        }
        files.close().map_err(ExportError::from)?;
        if request.latest_provenance && !exported_provenance {
            let mut seen: HashSet<String> = HashSet::new();
            for &rt in types.iter().filter(|t| t.as_str() != "Provenance") {
                let filters = request.filters_of(rt).map_err(ExportError::from)?;
                let slice = Slice {
                    resource_type: rt,
                    filters: &filters,
                    since: request.since,
                    patients,
                };
                reader
                    .each_latest_provenance(&slice, |resource, compartments| {
                        if let Some(e) = cancelled() {
                            return Err(e);
                        }
                        if seen.insert(resource.id.clone()) {
                            written_patients.extend(compartments.into_iter().flatten());
                            files.line("output", "Provenance", &resource.body)?;
                        }
                        Ok(())
                    })
                    .await
                    .map_err(stop)?;
            }
            files.close().map_err(ExportError::from)?;
        }
        for warning in &warnings {
            let outcome = json!({"resourceType": "OperationOutcome", "issue": [{
                "severity": "warning", "code": "informational", "diagnostics": warning}]});
            files
                .line(
                    "error",
                    "OperationOutcome",
                    &serde_json::to_vec(&outcome)
                        .map_err(std::io::Error::from)
                        .map_err(ExportError::from)?,
                )
                .map_err(ExportError::from)?;
        }
        files.close().map_err(ExportError::from)?;
        if progress.cancelled.load(Ordering::Relaxed) {
            return Err(Stop::Cancelled);
        }
        Ok(Written {
            files: files.done,
            transaction_time: reader.transaction_time,
            members_left_out,
            patients: written_patients,
        })
    }
}
