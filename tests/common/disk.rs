//! A small store disk that a test can fill and empty again, so the daemon
//! meets a real filesystem fault (and sled's own sticky error):
//!
//! * a 16 MiB tmpfs mounted on a temporary directory (root may mount), filled
//!   with a filler file until ENOSPC and emptied by deleting it;
//! * where mounting is not permitted (or `RUNBRIDGE_TEST_DISK=fsize`), a plain
//!   directory and `RLIMIT_FSIZE` on the daemon, set with `prlimit` to the
//!   store's current largest file size (further growth fails with EFBIG) and
//!   raised again when "space returns".

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// How the disk is made to fail (tests may only have one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// A mounted tmpfs, filled by a filler file (ENOSPC).
    Tmpfs,
    /// `RLIMIT_FSIZE` on the daemon (EFBIG), where mounting is not permitted.
    FileSizeLimit,
}

/// The store's disk; unmounted on drop (drop it after the daemon).
pub struct SmallDisk {
    dir: TempDir,
    pub kind: DiskKind,
    filler: Option<PathBuf>,
}

impl SmallDisk {
    /// A tmpfs of `size` (mount's syntax, e.g. `16m`), or the fallback.
    pub fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let forced = std::env::var("RUNBRIDGE_TEST_DISK").is_ok_and(|v| v == "fsize");
        let mounted = !forced
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let kind = if mounted {
            DiskKind::Tmpfs
        } else {
            DiskKind::FileSizeLimit
        };
        SmallDisk {
            dir,
            kind,
            filler: None,
        }
    }

    /// The directory to use as `storage.path`.
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// Makes the disk refuse the store's next growth. Returns a description.
    pub fn fill(&mut self, daemon_pid: u32) -> String {
        match self.kind {
            DiskKind::Tmpfs => {
                let path = self.dir.path().join("filler");
                let mut f = std::fs::File::create(&path).expect("create filler");
                let chunk = vec![0xA5u8; 64 * 1024];
                let mut written = 0u64;
                loop {
                    match f.write(&chunk) {
                        Ok(0) => break,
                        Ok(n) => written += n as u64,
                        Err(_) => break,
                    }
                }
                // Partial pages: keep writing small pieces until nothing fits.
                let byte = [0u8; 1];
                while f.write(&byte).is_ok_and(|n| n == 1) {
                    written += 1;
                }
                self.filler = Some(path);
                format!("tmpfs filled with a {written}-byte filler")
            }
            DiskKind::FileSizeLimit => {
                let largest = largest_file(&self.store_path());
                prlimit(daemon_pid, &format!("{largest}:"));
                format!("RLIMIT_FSIZE of pid {daemon_pid} set to {largest} bytes")
            }
        }
    }

    /// Space returns: the filler is deleted, or the file-size limit raised.
    pub fn free(&mut self, daemon_pid: u32) {
        match self.kind {
            DiskKind::Tmpfs => {
                if let Some(p) = self.filler.take() {
                    std::fs::remove_file(p).expect("remove filler");
                }
            }
            DiskKind::FileSizeLimit => prlimit(daemon_pid, "unlimited:"),
        }
    }
}

fn largest_file(dir: &Path) -> u64 {
    let mut max = 0;
    for entry in std::fs::read_dir(dir).expect("read store dir").flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            max = max.max(largest_file(&entry.path()));
        } else {
            max = max.max(meta.len());
        }
    }
    max
}

fn prlimit(pid: u32, fsize: &str) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--fsize={fsize}"))
        .status()
        .expect("run prlimit");
    assert!(
        status.success(),
        "prlimit --fsize={fsize} failed: {status:?}"
    );
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.kind == DiskKind::Tmpfs {
            // Lazy: a daemon still exiting must not keep the mount alive.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
