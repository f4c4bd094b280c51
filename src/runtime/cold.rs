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

use crate::im::cold::{entry_in_bytes, record_len, segment_file, ColdRef, OPEN_FILES_MAX};
use crate::im::engine::{PageEntry, PagePlan};
use crate::im::Page;
use crate::store::record::RECORD_HEADER_BYTES;

/// Bytes read at a record's position at first: most records fit, the rest take a second read.
const FIRST_READ: usize = 4096;
/// Record bytes one page may read: a huge group's delivery record is up to 800 KB (the whole
/// record is read, its checksum checked), so a page of old huge-group messages stops after
/// this much and the client pulls on from its end. The first entry always goes in.
const PAGE_BYTES_MAX: usize = 4 << 20;

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
        let path = segment_file(&self.data, at);
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
    /// entries it holds), cut short after [`PAGE_BYTES_MAX`] bytes of records. Fails on the
    /// first entry that cannot be read, naming it.
    pub async fn resolve(&self, uid: u64, plan: PagePlan) -> Result<Page, String> {
        let mut entries = Vec::with_capacity(plan.entries.len());
        let mut last: Option<(ColdRef, Vec<u8>)> = None;
        let mut read = 0;
        for (seq, e) in plan.entries {
            let m = match e {
                PageEntry::Hot(m) => m,
                PageEntry::Cold(at) => {
                    if last.as_ref().map_or(true, |(a, _)| *a != at) {
                        if read >= PAGE_BYTES_MAX {
                            break;
                        }
                        let bytes = self.record(at).await?;
                        read += bytes.len();
                        last = Some((at, bytes));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::model::{Class, EntryKind, Message, MsgId, Target};
    use crate::im::record::{encode_delivery, KIND_DELIVERY};
    use crate::store::{FileLog, StoreOptions};

    fn run<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("joined")
    }

    /// Ten delivery records of one message each to 40,000 users (640 KB each); user 10 gets
    /// seq k + 1 from record k.
    fn log_of_big_records(data: &std::path::Path) -> Vec<ColdRef> {
        let dir = crate::serve::setup::core_dir(data, 0);
        let options = StoreOptions {
            segment_bytes_max: 64 << 20,
            pending_bytes_max: 16 << 20,
            adopt: false,
        };
        let (mut log, _) = FileLog::open(&dir, 0, options, |_, _| {}).unwrap();
        let mut refs = Vec::new();
        for k in 0..10u64 {
            let m = Arc::new(Message {
                id: MsgId {
                    sender: 9,
                    seq: k + 1,
                },
                kind: EntryKind::Message,
                refer: None,
                appinfo: u128::from(k),
                to: Target::Group(1),
                class: Class::Chat,
                sent_ms: 1,
                body: format!("message {k}").into_bytes().into(),
            });
            let recipients: Vec<(u64, u64)> = (0..40_000u64)
                .map(|u| (u + 10, if u == 0 { k + 1 } else { 1 }))
                .collect();
            let mut p = Vec::new();
            encode_delivery(&[m], &recipients, &mut p);
            let a = log.append(KIND_DELIVERY, 9, k + 1, &p).unwrap();
            refs.push(ColdRef::new(0, a.start));
        }
        log.commit().unwrap();
        refs
    }

    #[test]
    fn pages_read_back_cold_entries_and_stop_after_their_byte_budget() {
        let data = tempfile::tempdir().unwrap();
        let refs = log_of_big_records(data.path());
        let path = data.path().to_path_buf();
        let (n, bodies, max_seq) = run(move || async move {
            let pages = ColdPages::new(path);
            let plan = PagePlan {
                entries: refs
                    .iter()
                    .enumerate()
                    .map(|(k, &at)| (k as u64 + 1, PageEntry::Cold(at)))
                    .collect(),
                max_seq: 10,
            };
            let page = pages.resolve(10, plan).await.unwrap();
            let bodies: Vec<String> = page
                .entries
                .iter()
                .map(|(_, m)| String::from_utf8(m.body.to_vec()).unwrap())
                .collect();
            (page.entries.len(), bodies, page.max_seq)
        });
        // 640 KB records: the seventh takes the page past 4 MiB, so the page ends there.
        assert_eq!(n, 7);
        assert_eq!(max_seq, 10);
        for (k, b) in bodies.iter().enumerate() {
            assert_eq!(b, &format!("message {k}"));
        }
    }

    #[test]
    fn a_damaged_or_missing_record_fails_the_page() {
        let data = tempfile::tempdir().unwrap();
        let refs = log_of_big_records(data.path());
        // Flip a byte inside the third record's payload.
        let seg = crate::store::file::segment_path(
            &crate::serve::setup::core_dir(data.path(), 0),
            refs[2].position().segment,
        );
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[refs[2].position().offset as usize + 100] ^= 1;
        std::fs::write(&seg, bytes).unwrap();
        let path = data.path().to_path_buf();
        let missing = ColdRef::new(3, refs[0].position());
        let (damaged, gone, wrong_user) = run(move || async move {
            let pages = ColdPages::new(path);
            let plan = |at: ColdRef, seq| PagePlan {
                entries: vec![(seq, PageEntry::Cold(at))],
                max_seq: 10,
            };
            (
                pages.resolve(10, plan(refs[2], 3)).await,
                pages.resolve(10, plan(missing, 1)).await,
                pages.resolve(4, plan(refs[0], 1)).await,
            )
        });
        assert!(damaged.unwrap_err().contains("checksum"));
        assert!(gone.unwrap_err().contains("core-3"));
        assert!(wrong_user.unwrap_err().contains("no copy for user 4"));
    }
}
