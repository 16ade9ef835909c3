//! Streams sealed in chunks: a file (an export's NDJSON, later a document's bytes) written and read
//! a chunk at a time, so memory stays at one chunk whatever the size of the whole.
//!
//! Each chunk is [`seal_with_aad`]ed (lz4, then AES-256-GCM with a random nonce) under the
//! stream's data key, with additional data binding it to its purpose, its object (the job and file
//! name), its index and whether it is the last: chunks cannot be reordered, dropped, moved to
//! another file or cut off after any chunk but the last without [`ChunkReader`] failing.
//!
//! On disk a stream is `MAGIC`, then per chunk `[last: u8][length: u32 BE][sealed]`. The sealed
//! form is this crate's own (no crate seals a chunked stream under a caller's key with this
//! binding; STREAM constructions such as `aead::stream` fix the nonce scheme and not the binding).

use super::{open_with_aad, seal_with_aad, Dek, SealError};
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"CRPCHNK1";

/// The largest sealed chunk a reader accepts (a chunk of plaintext is at most a few MiB).
const MAX_SEALED_CHUNK: usize = 64 << 20;

fn aad(purpose: &str, object: &str, index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(purpose.len() + object.len() + 16);
    aad.extend_from_slice(purpose.as_bytes());
    aad.push(0);
    aad.extend_from_slice(object.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Seal one chunk of a stream kept elsewhere than a file (a Binary's content, a row per chunk):
/// the same sealing and binding as [`ChunkWriter`]'s, its framing left to the caller.
pub fn seal_chunk(
    dek: &Dek,
    purpose: &str,
    object: &str,
    index: u64,
    last: bool,
    plain: &[u8],
) -> Vec<u8> {
    seal_with_aad(dek, &aad(purpose, object, index, last), plain)
}

/// Open a chunk sealed by [`seal_chunk`] with the same purpose, object, index and last flag;
/// any other fails.
pub fn open_chunk(
    dek: &Dek,
    purpose: &str,
    object: &str,
    index: u64,
    last: bool,
    sealed: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    Ok(open_with_aad(
        dek,
        &aad(purpose, object, index, last),
        sealed,
    )?)
}

/// Writes plaintext as sealed chunks of `chunk` bytes (the last may be shorter).
pub struct ChunkWriter<W: Write> {
    out: W,
    dek: Dek,
    purpose: &'static str,
    object: String,
    chunk: usize,
    buffer: Vec<u8>,
    index: u64,
    /// Plaintext bytes taken so far.
    pub plaintext: u64,
    /// Bytes written to `out` so far.
    pub written: u64,
}

impl<W: Write> ChunkWriter<W> {
    pub fn new(
        mut out: W,
        dek: &Dek,
        purpose: &'static str,
        object: String,
        chunk: usize,
    ) -> io::Result<ChunkWriter<W>> {
        out.write_all(MAGIC)?;
        Ok(ChunkWriter {
            out,
            dek: dek.clone(),
            purpose,
            object,
            chunk: chunk.max(1),
            buffer: Vec::with_capacity(chunk.max(1)),
            index: 0,
            plaintext: 0,
            written: MAGIC.len() as u64,
        })
    }

    /// Take more plaintext; full chunks are sealed and written as they fill.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.plaintext += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = self.chunk - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == self.chunk {
                self.flush_chunk(false)?;
            }
        }
        Ok(())
    }

    fn flush_chunk(&mut self, last: bool) -> io::Result<()> {
        let sealed = seal_with_aad(
            &self.dek,
            &aad(self.purpose, &self.object, self.index, last),
            &self.buffer,
        );
        let length = u32::try_from(sealed.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "chunk too large"))?;
        self.out.write_all(&[u8::from(last)])?;
        self.out.write_all(&length.to_be_bytes())?;
        self.out.write_all(&sealed)?;
        self.written += 5 + sealed.len() as u64;
        self.index += 1;
        self.buffer.clear();
        Ok(())
    }

    /// Seal what is left as the last chunk (possibly empty) and hand back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_chunk(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Why a sealed stream did not read back.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("reading the sealed stream: {0}")]
    Io(#[from] io::Error),
    /// Not a sealed stream, a chunk that fails to open, out of order or bound to another object,
    /// or a stream cut off before its last chunk.
    #[error("the sealed stream failed its integrity check")]
    Integrity,
}

impl From<SealError> for ChunkError {
    fn from(_: SealError) -> ChunkError {
        ChunkError::Integrity
    }
}

/// Reads a sealed stream back one plaintext chunk at a time.
pub struct ChunkReader<R: Read> {
    input: R,
    dek: Dek,
    purpose: &'static str,
    object: String,
    index: u64,
    started: bool,
    done: bool,
}

impl<R: Read> ChunkReader<R> {
    pub fn new(input: R, dek: &Dek, purpose: &'static str, object: String) -> ChunkReader<R> {
        ChunkReader {
            input,
            dek: dek.clone(),
            purpose,
            object,
            index: 0,
            started: false,
            done: false,
        }
    }

    /// The next chunk's plaintext, or `None` after the last chunk. A stream that ends before its
    /// last chunk, or goes on after it, is an integrity error.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ChunkError> {
        if !self.started {
            let mut magic = [0u8; 8];
            read_exact_or_integrity(&mut self.input, &mut magic)?;
            if &magic != MAGIC {
                return Err(ChunkError::Integrity);
            }
            self.started = true;
        }
        if self.done {
            let mut more = [0u8; 1];
            return match self.input.read(&mut more)? {
                0 => Ok(None),
                _ => Err(ChunkError::Integrity),
            };
        }
        let mut head = [0u8; 5];
        read_exact_or_integrity(&mut self.input, &mut head)?;
        let last = match head[0] {
            0 => false,
            1 => true,
            _ => return Err(ChunkError::Integrity),
        };
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if length > MAX_SEALED_CHUNK {
            return Err(ChunkError::Integrity);
        }
        let mut sealed = vec![0u8; length];
        read_exact_or_integrity(&mut self.input, &mut sealed)?;
        let plain = open_with_aad(
            &self.dek,
            &aad(self.purpose, &self.object, self.index, last),
            &sealed,
        )?;
        self.index += 1;
        self.done = last;
        Ok(Some(plain))
    }
}

/// `read_exact`, where running out of bytes means the stream was cut off.
fn read_exact_or_integrity(input: &mut impl Read, buf: &mut [u8]) -> Result<(), ChunkError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ChunkError::Integrity,
        _ => ChunkError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(text: &[u8], chunk: usize) -> (Dek, Vec<u8>) {
        let dek = Dek::random();
        let mut w = ChunkWriter::new(Vec::new(), &dek, "test", "job/a".into(), chunk).unwrap();
        for piece in text.chunks(7) {
            w.write(piece).unwrap();
        }
        (dek, w.finish().unwrap())
    }

    fn read_all(dek: &Dek, bytes: &[u8], object: &str) -> Result<Vec<u8>, ChunkError> {
        let mut r = ChunkReader::new(bytes, dek, "test", object.into());
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk()? {
            out.extend(c);
        }
        Ok(out)
    }

    #[test]
    fn a_stream_reads_back_whole_and_reveals_nothing() {
        let text =
            b"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Canary-Zq\"}]}\n".repeat(50);
        for chunk in [1, 10, 64, 1 << 20] {
            let (dek, bytes) = sealed(&text, chunk);
            assert_eq!(
                read_all(&dek, &bytes, "job/a").unwrap(),
                text,
                "chunk {chunk}"
            );
            assert!(!bytes.windows(9).any(|w| w == b"Canary-Zq"));
        }
        let (dek, bytes) = sealed(b"", 64);
        assert_eq!(read_all(&dek, &bytes, "job/a").unwrap(), b"");
    }

    #[test]
    fn cut_reordered_moved_or_extended_streams_fail() {
        let text = b"0123456789".repeat(10);
        let (dek, bytes) = sealed(&text, 30);
        // Moved to another object.
        assert!(matches!(
            read_all(&dek, &bytes, "job/b"),
            Err(ChunkError::Integrity)
        ));
        // Cut off after a chunk boundary (before the last chunk) or inside a chunk.
        let frame = 5 + u32::from_be_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
        for cut in [8, 8 + frame, bytes.len() - 1] {
            assert!(
                matches!(
                    read_all(&dek, &bytes[..cut], "job/a"),
                    Err(ChunkError::Integrity)
                ),
                "cut at {cut}"
            );
        }
        // Something after the last chunk.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&dek, &longer, "job/a").is_err());
        // The last flag flipped on the first chunk (the rest dropped).
        let mut flipped = bytes[..8 + frame].to_vec();
        flipped[8] = 1;
        assert!(read_all(&dek, &flipped, "job/a").is_err());
        // Wrong key.
        assert!(read_all(&Dek::random(), &bytes, "job/a").is_err());
    }
}
