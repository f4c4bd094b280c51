//! Reading cold stream entries back from the logs for a SYNC (R24), on the core's thread
//! without blocking it: glommio's buffered file reads (io_uring) of the records the entries'
//! positions name, decoded and checked by [`crate::im::cold`]. The core keeps the segment
//! files it read from open (at most [`OPEN_FILES_MAX`]); the retention pass closes them,
//! since compaction may replace a file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::BufferedFile;

use crate::im::cold::{entry_in_bytes, record_len, ColdRef};
use crate::im::engine::{PageEntry, PagePlan};
use crate::im::Page;
use crate::store::record::RECORD_HEADER_BYTES;

/// Most segment files a core keeps open for cold reads.
const OPEN_FILES_MAX: usize = 64;
/// Bytes read at a record's position at first: most records fit, the rest take a second read.
const FIRST_READ: usize = 4096;

/// One core's open segment files for cold reads.
pub(crate) struct ColdPages {
    data: PathBuf,
    files: RefCell<HashMap<(u16, u64), Rc<BufferedFile>>>,
}

impl ColdPages {
    pub fn new(data: PathBuf) -> ColdPages {
        ColdPages {
            data,
            files: RefCell::new(HashMap::new()),
        }
    }

    /// Closes the files (compaction may have renamed new ones over them).
    pub fn forget(&self) {
        self.files.borrow_mut().clear();
    }

    async fn file(&self, at: ColdRef) -> Result<Rc<BufferedFile>, String> {
        let key = (at.core(), at.position().segment);
        if let Some(f) = self.files.borrow().get(&key) {
            return Ok(f.clone());
        }
        let dir = crate::serve::setup::core_dir(&self.data, at.core());
        let path = crate::store::file::segment_path(&dir, at.position().segment);
        let f = BufferedFile::open(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let f = Rc::new(f);
        let mut files = self.files.borrow_mut();
        if files.len() >= OPEN_FILES_MAX {
            files.clear();
        }
        files.insert(key, f.clone());
        Ok(f)
    }

    /// The record at `at`, whole.
    async fn record(&self, at: ColdRef) -> Result<Vec<u8>, String> {
        let f = self.file(at).await?;
        let offset = at.position().offset;
        let first = f
            .read_at(offset, FIRST_READ)
            .await
            .map_err(|e| format!("{at}: {e}"))?;
        if first.len() < RECORD_HEADER_BYTES {
            return Err(format!("{at}: no record there (the file ends)"));
        }
        let len = record_len(&first[..RECORD_HEADER_BYTES]).map_err(|e| format!("{at}: {e}"))?;
        if first.len() >= len {
            return Ok(first[..len].to_vec());
        }
        let all = f
            .read_at(offset, len)
            .await
            .map_err(|e| format!("{at}: {e}"))?;
        if all.len() < len {
            return Err(format!("{at}: the record is cut short"));
        }
        Ok(all[..len].to_vec())
    }

    /// The page, its cold entries read from the logs (a merged record is read once for the
    /// entries it holds). Fails on the first entry that cannot be read, naming it.
    pub async fn resolve(&self, uid: u64, plan: PagePlan) -> Result<Page, String> {
        let mut entries = Vec::with_capacity(plan.entries.len());
        let mut last: Option<(ColdRef, Vec<u8>)> = None;
        for (seq, e) in plan.entries {
            let m = match e {
                PageEntry::Hot(m) => m,
                PageEntry::Cold(at) => {
                    if last.as_ref().map_or(true, |(a, _)| *a != at) {
                        last = Some((at, self.record(at).await?));
                    }
                    let bytes = &last.as_ref().expect("just read").1;
                    let m = entry_in_bytes(at.position().segment, bytes, uid, seq)
                        .map_err(|e| format!("{at}: {e}"))?;
                    Arc::new(m)
                }
            };
            entries.push((seq, m));
        }
        Ok(Page {
            entries,
            max_seq: plan.max_seq,
        })
    }
}
