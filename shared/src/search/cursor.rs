//! Paging cursors, sealed: a search's keyset position (bound to the query's digest) and the
//! positions of history and `$everything` pages (bound to their kind). A cursor may name a row the
//! page left out, which the client must not read; sealing makes it opaque and unforgeable.

use super::query::{BadSearch, SearchQuery};
use crate::crypto::{self, Dek};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Cursor {
    /// Digest of the query the cursor belongs to.
    pub(crate) q: String,
    /// `n` for the page after `v`/`i`, `p` for the page before.
    pub(crate) d: char,
    pub(crate) v: Vec<f64>,
    pub(crate) i: String,
    /// Offset, for searches sorted in memory.
    pub(crate) o: usize,
}

pub(crate) fn query_digest(query: &SearchQuery) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(query.resource_type.as_str());
    if let Some(patient) = &query.compartment {
        h.update([2]);
        h.update(patient.as_str());
    }
    for (k, v) in &query.kept {
        h.update([0]);
        h.update(k);
        h.update([1]);
        h.update(v);
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) const CURSOR_AAD: &[u8] = b"carapace/search-cursor/v1";

pub(crate) fn seal_cursor(key: &Dek, cursor: &Cursor) -> String {
    use base64::Engine;
    let json = serde_json::to_vec(cursor).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crypto::seal_with_aad(key, CURSOR_AAD, &json))
}

pub(crate) fn open_cursor(key: &Dek, text: &str, digest: &str) -> Result<Cursor, BadSearch> {
    use base64::Engine;
    let invalid = || bad("_page is not a paging cursor of this search (it may have been altered)");
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| invalid())?;
    let json = crypto::open_with_aad(key, CURSOR_AAD, &sealed).map_err(|_| invalid())?;
    let cursor: Cursor = serde_json::from_slice(&json).map_err(|_| invalid())?;
    if cursor.q != digest || !matches!(cursor.d, 'n' | 'p') {
        return Err(invalid());
    }
    Ok(cursor)
}

pub(crate) fn bad(msg: impl Into<String>) -> BadSearch {
    BadSearch(msg.into())
}
