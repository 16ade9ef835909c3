//! A job's files: NDJSON sealed in chunks under the job's key, one file open at a time, split
//! past the configured size, written as `<name>.part` and renamed when whole; and a download,
//! opened for the job's owner and decrypted a chunk at a time while it is sent.

use super::jobs::ManifestFile;
use super::{ExportError, Exporter};
use crate::access::AccessContext;
use crate::crypto::chunks::{ChunkReader, ChunkWriter};
use crate::crypto::Dek;
use sqlx::Row;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::PathBuf;

/// Purpose bound into every chunk of an export file.
const PURPOSE: &str = "carapace-export";

/// Plaintext per sealed chunk.
const CHUNK: usize = 1 << 20;

struct Open {
    kind: &'static str,
    resource_type: String,
    name: String,
    count: i64,
    writer: ChunkWriter<BufWriter<File>>,
}

/// The files of one job as they are written.
pub(super) struct FileSet {
    dir: PathBuf,
    job: String,
    dek: Dek,
    max_bytes: u64,
    open: Option<Open>,
    numbers: std::collections::HashMap<String, u32>,
    pub done: Vec<ManifestFile>,
    /// NDJSON bytes written so far (plaintext).
    pub bytes: u64,
}

impl FileSet {
    /// Files in `dir`, each bound to `run` (`<job>/r<attempt>`) and its name.
    pub fn create(dir: PathBuf, run: &str, dek: &Dek, max_bytes: u64) -> io::Result<FileSet> {
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(FileSet {
            dir,
            job: run.to_string(),
            dek: dek.clone(),
            max_bytes: max_bytes.max(1),
            open: None,
            numbers: Default::default(),
            done: vec![],
            bytes: 0,
        })
    }

    /// Append one NDJSON line (without its newline) to the current file of `kind` and type.
    pub fn line(&mut self, kind: &'static str, resource_type: &str, json: &[u8]) -> io::Result<()> {
        let same = self
            .open
            .as_ref()
            .is_some_and(|o| o.kind == kind && o.resource_type == resource_type);
        let full = self
            .open
            .as_ref()
            .is_some_and(|o| o.writer.plaintext >= self.max_bytes);
        if !same || full {
            self.close()?;
            self.start(kind, resource_type)?;
        }
        if let Some(open) = self.open.as_mut() {
            open.writer.write(json)?;
            open.writer.write(b"\n")?;
            open.count += 1;
            self.bytes += json.len() as u64 + 1;
        }
        Ok(())
    }

    fn start(&mut self, kind: &'static str, resource_type: &str) -> io::Result<()> {
        let stem = match kind {
            "deleted" => format!("{resource_type}-deleted"),
            "error" => "errors".to_string(),
            _ => resource_type.to_string(),
        };
        let n = self.numbers.entry(stem.clone()).or_insert(0);
        *n += 1;
        let name = format!("{stem}-{n}.ndjson");
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(self.dir.join(format!("{name}.part")))?;
        let writer = ChunkWriter::new(
            BufWriter::with_capacity(256 << 10, file),
            &self.dek,
            PURPOSE,
            format!("{}/{name}", self.job),
            CHUNK,
        )?;
        self.open = Some(Open {
            kind,
            resource_type: resource_type.to_string(),
            name,
            count: 0,
            writer,
        });
        Ok(())
    }

    /// Seal the last chunk of the open file, sync it and give it its final name.
    pub fn close(&mut self) -> io::Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let plaintext = open.writer.plaintext;
        let file = open
            .writer
            .finish()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(
            self.dir.join(format!("{}.part", open.name)),
            self.dir.join(&open.name),
        )?;
        self.done.push(ManifestFile {
            kind: open.kind.to_string(),
            resource_type: open.resource_type,
            name: open.name,
            count: open.count,
            bytes: i64::try_from(plaintext).unwrap_or(i64::MAX),
        });
        Ok(())
    }
}

/// A file being handed out: its size (of the NDJSON) and its chunks, decrypted one at a time on
/// a blocking thread as the receiver takes them (an integrity failure ends the stream with an
/// error, so the client sees a cut-off response, never wrong data).
pub struct Download {
    pub bytes: u64,
    pub chunks: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
}

/// Is `name` one of the names [`FileSet`] gives (nothing else reaches the file system)?
fn valid_name(name: &str) -> bool {
    name.strip_suffix(".ndjson").is_some_and(|stem| {
        let (base, number) = stem.rsplit_once('-').unwrap_or(("", ""));
        !base.is_empty()
            && !number.is_empty()
            && number.chars().all(|c| c.is_ascii_digit())
            && base.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

impl Exporter {
    /// Open one file of a finished job for its owner (another's job, an unknown file, an expired
    /// job: not found). The hand-out is audited before the first byte leaves.
    pub async fn open_file(
        &self,
        ctx: &AccessContext,
        id: &str,
        name: &str,
    ) -> Result<Download, ExportError> {
        if uuid::Uuid::parse_str(id).is_err() || !valid_name(name) {
            return Err(ExportError::NotFound);
        }
        let job = self.owned_job(ctx, id).await?;
        if job.try_get::<String, _>("state")? != "complete" {
            return Err(ExportError::NotFound);
        }
        let attempt: i32 = job.try_get("attempts")?;
        let bytes: i64 =
            sqlx::query_scalar("SELECT bytes FROM export_files WHERE job_id = $1 AND name = $2")
                .bind(id)
                .bind(name)
                .fetch_optional(self.store.pool())
                .await?
                .ok_or(ExportError::NotFound)?;
        // Each download holds a blocking thread while its client reads: a bounded number at once.
        let permit = self.downloads.clone().try_acquire_owned().map_err(|_| {
            ExportError::TooMany(
                "this server is sending as many export files as it may at once; retry shortly"
                    .into(),
            )
        })?;
        let dek = self.store.export_key(id, false).await?;
        let path = self.run_dir(id, attempt).join(name);
        let file = File::open(&path)?;
        self.store
            .audit_export(
                ctx,
                &format!("urn:carapace:export:{id}/{name}"),
                &[ctx.compartment()],
                true,
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let object = format!("{id}/r{attempt}/{name}");
        let dek = Dek::clone(&dek);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut reader = ChunkReader::new(io::BufReader::new(file), &dek, PURPOSE, object);
            loop {
                let next = match reader.next_chunk() {
                    Ok(Some(chunk)) => Ok(bytes::Bytes::from(chunk)),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "an export file failed to open");
                        Err(io::Error::other("export file integrity"))
                    }
                };
                let failed = next.is_err();
                if tx.blocking_send(next).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Download {
            bytes: u64::try_from(bytes).unwrap_or(0),
            chunks: rx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn only_the_names_a_job_gives_reach_the_file_system() {
        for ok in [
            "Patient-1.ndjson",
            "Observation-deleted-12.ndjson",
            "errors-1.ndjson",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "../x-1.ndjson",
            "Patient-1.ndjson.part",
            "Patient.ndjson",
            "a/b-1.ndjson",
            "-1.ndjson",
            "Patient-x.ndjson",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
