//! Durable policies: the policy directory as the daemon's store.
//!
//! The daemon loads its policy directory at start (and on SIGHUP) and writes
//! every change accepted over REST back into it, so a restarted daemon comes
//! back with the same set. Each write is atomic: a temporary file in the same
//! directory is written and fsynced, then renamed over the target, then the
//! directory is fsynced. A policy that lives alone in its file is rewritten
//! in place; one that shares a file with others moves to `NAME.yaml` (the
//! file it came from is rewritten without it); a deleted policy's file is
//! removed, or rewritten without it. Comments of rewritten files are lost.
//!
//! Changes are two-phase so that a change that fails to apply leaves the
//! files as they were: [`PolicyStore::prepare`] writes every new file content
//! to temporary files, the caller applies the set to the datapath, then
//! [`Prepared::commit`] renames them into place (or dropping the
//! [`Prepared`] removes them).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::policy::load::{LoadError, load_path_with_origins, validate_loaded};
use crate::policy::model::Policy;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading the directory failed or it holds invalid policies.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The policy directory and which file holds each policy.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
}

impl PolicyStore {
    /// Loads and validates every policy of `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<(PolicyStore, Vec<Policy>), StoreError> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let loaded = load_path_with_origins(dir)?;
        validate_loaded(&loaded)?;
        let mut files = BTreeMap::new();
        let mut policies = Vec::new();
        for l in loaded {
            files.insert(l.policy.name.clone(), PathBuf::from(&l.origin));
            policies.push(l.policy);
        }
        Ok((
            PolicyStore {
                dir: dir.to_path_buf(),
                files,
            },
            policies,
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a policy is stored in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.files.get(name).map(|p| p.as_path())
    }

    /// Writes, to temporary files, what the directory must hold for `new`
    /// (the whole next set) given that `changed` policies were created or
    /// replaced and `deleted` ones removed. Nothing visible changes until
    /// [`Prepared::commit`].
    pub fn prepare(
        &self,
        new: &[Policy],
        changed: &BTreeSet<String>,
        deleted: &BTreeSet<String>,
    ) -> Result<Prepared, StoreError> {
        let by_name: BTreeMap<&str, &Policy> = new.iter().map(|p| (p.name.as_str(), p)).collect();
        // Current file → policies in it (in the next set, by current placement).
        let mut members: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (name, file) in &self.files {
            members.entry(file.clone()).or_default().push(name.clone());
        }
        let mut next_files = self.files.clone();
        let mut contents: BTreeMap<PathBuf, Option<Vec<&Policy>>> = BTreeMap::new();
        let touched: BTreeSet<&String> = changed.iter().chain(deleted.iter()).collect();
        for name in &touched {
            let old_file = self.files.get(*name).cloned();
            let shared = old_file.as_ref().is_some_and(|f| members[f].len() > 1);
            if deleted.contains(*name) {
                next_files.remove(*name);
            } else {
                let target = match (&old_file, shared) {
                    (Some(f), false) => f.clone(),
                    _ => self.dir.join(format!("{name}.yaml")),
                };
                next_files.insert((*name).clone(), target.clone());
                contents.insert(target, None);
            }
            if let Some(f) = old_file {
                contents.insert(f, None);
            }
        }
        // Fill every touched file with the policies that live there next.
        let mut prepared = Prepared {
            writes: Vec::new(),
            removes: Vec::new(),
            files: next_files.clone(),
        };
        for (file, slot) in contents.iter_mut() {
            let mut list: Vec<&Policy> = next_files
                .iter()
                .filter(|(_, f)| *f == file)
                .filter_map(|(n, _)| by_name.get(n.as_str()).copied())
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            *slot = if list.is_empty() { None } else { Some(list) };
        }
        for (file, list) in contents {
            match list {
                None => prepared.removes.push(file),
                Some(list) => {
                    let text = list
                        .iter()
                        .map(|p| serde_yaml::to_string(p).expect("policies serialise"))
                        .collect::<Vec<_>>()
                        .join("---\n");
                    let tmp = tmp_name(&file);
                    write_synced(&tmp, text.as_bytes())?;
                    prepared.writes.push((tmp, file));
                }
            }
        }
        Ok(prepared)
    }

    /// Adopts the placement of a committed change.
    pub fn adopt(&mut self, p: &Prepared) {
        self.files = p.files.clone();
    }
}

fn tmp_name(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("policy");
    // Starts with a dot: the loader ignores hidden files.
    file.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io("creating", path))?;
    f.write_all(data).map_err(io("writing", path))?;
    f.sync_all().map_err(io("syncing", path))
}

/// Writes `path` atomically (temporary file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_name(path);
    write_synced(&tmp, data)?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", dir))?;
    }
    Ok(())
}

/// A prepared change of the directory: temporary files written, nothing
/// visible yet. Dropping it without [`Prepared::commit`] removes them.
#[derive(Debug)]
pub struct Prepared {
    writes: Vec<(PathBuf, PathBuf)>,
    removes: Vec<PathBuf>,
    files: BTreeMap<String, PathBuf>,
}

impl Prepared {
    /// Makes the change visible: renames, removals, directory fsync.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let writes = std::mem::take(&mut self.writes);
        for (tmp, file) in &writes {
            std::fs::rename(tmp, file).map_err(io("renaming into", file))?;
        }
        for file in std::mem::take(&mut self.removes) {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &file)(e)),
            }
        }
        if let Some((_, file)) = writes.first() {
            sync_dir(file)?;
        }
        Ok(())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for (tmp, _) in &self.writes {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::parse_str;

    fn pol(name: &str, vlan: u16) -> Policy {
        parse_str(
            &format!("version: 1\nname: {name}\ntaps: [vm1-tap]\noutputs: [{{interface: mon0, vlan: {vlan}}}]\n"),
            "t",
        )
        .unwrap()
        .remove(0)
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_land_in_the_right_files_and_reload_identically() {
        let dir = std::env::temp_dir().join(format!("vtap-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shared = format!(
            "{}---\n{}",
            serde_yaml::to_string(&pol("a", 1)).unwrap(),
            serde_yaml::to_string(&pol("b", 2)).unwrap()
        );
        std::fs::write(dir.join("ab.yaml"), shared).unwrap();
        std::fs::write(
            dir.join("c.yaml"),
            serde_yaml::to_string(&pol("c", 3)).unwrap(),
        )
        .unwrap();
        let (mut store, policies) = PolicyStore::open(&dir).unwrap();
        assert_eq!(policies.len(), 3);

        // Replace a (shared file → a.yaml), delete c, create d.
        let next = vec![pol("a", 10), pol("b", 2), pol("d", 4)];
        let p = store
            .prepare(&next, &set(&["a", "d"]), &set(&["c"]))
            .unwrap();
        // Nothing visible before commit.
        assert!(!dir.join("a.yaml").exists());
        assert!(dir.join("c.yaml").exists());
        store.adopt(&p);
        p.commit().unwrap();
        let (_, reloaded) = PolicyStore::open(&dir).unwrap();
        let mut got: Vec<Policy> = reloaded;
        got.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(got, next);
        assert!(!dir.join("c.yaml").exists());
        assert!(dir.join("a.yaml").exists() && dir.join("d.yaml").exists());
        // No temporary file left behind.
        let hidden = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(hidden, 0);

        // A prepared change that is dropped leaves nothing.
        let (store, _) = PolicyStore::open(&dir).unwrap();
        let p = store
            .prepare(&[pol("z", 9)], &set(&["z"]), &set(&[]))
            .unwrap();
        drop(p);
        assert!(!dir.join("z.yaml").exists());
        let hidden = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(hidden, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
