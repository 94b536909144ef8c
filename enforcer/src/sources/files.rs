//! The file source: groups, prefix lists and Kubernetes objects read from the paths the
//! config names.
//!
//! Errors are as narrow as the input allows. A bad object inside a readable file fails
//! only the pods that depend on it (see the parsers); everything else in the file is
//! applied. Only a file that can't be read, or is not JSON/YAML of the expected shape at
//! all, is an error as a whole: it then contributes its last good content (nothing, if
//! it never had any) and the error is reported until it is fixed.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::model::group::GroupCatalog;
use crate::model::objects::KubeObjects;
use crate::sources::{SourceError, ec2};

pub struct Snapshot {
    pub catalog: GroupCatalog,
    pub kube: KubeObjects,
}

/// What was read, and what could not be: per-file errors (that file's last good content
/// is in the snapshot) and objects that could not be named.
pub struct Loaded {
    pub snapshot: Snapshot,
    pub errors: Vec<String>,
}

/// The last text of each file that parsed, kept across reloads.
#[derive(Default)]
pub struct FileSource {
    last_good: HashMap<PathBuf, String>,
}

fn read(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })
}

impl FileSource {
    /// Reads every file. Never fails: see the module comment.
    pub fn load(&mut self, cfg: &Config) -> Loaded {
        let mut catalog = GroupCatalog::default();
        let mut kube = KubeObjects::default();
        let mut errors = Vec::new();
        for p in &cfg.security_groups {
            if let Some(g) = self.parse(&cfg.resolve(p), &mut errors, ec2::parse_security_groups) {
                errors.extend(g.unnamed.iter().cloned());
                catalog.add_groups(g);
            }
        }
        for p in &cfg.prefix_lists {
            if let Some(lists) = self.parse(&cfg.resolve(p), &mut errors, ec2::parse_prefix_lists) {
                catalog.add_prefix_lists(lists);
            }
        }
        for (g, ips) in &cfg.group_members {
            catalog.members.entry(g.clone()).or_default().extend(ips);
        }
        for p in &cfg.kubernetes {
            let objects = self.parse(&cfg.resolve(p), &mut errors, |text, origin| {
                let mut k = KubeObjects::default();
                k.add_documents(text, origin)?;
                Ok(k)
            });
            if let Some(k) = objects {
                kube.extend(k);
            }
        }
        errors.extend(kube.errors.iter().cloned());
        Loaded {
            snapshot: Snapshot { catalog, kube },
            errors,
        }
    }

    /// Parses a file, or its last good text when it can't be read or parsed now.
    fn parse<T>(
        &mut self,
        path: &Path,
        errors: &mut Vec<String>,
        parse: impl Fn(&str, &str) -> Result<T, SourceError>,
    ) -> Option<T> {
        let origin = path.display().to_string();
        let now = read(path).and_then(|text| parse(&text, &origin).map(|v| (text, v)));
        match now {
            Ok((text, v)) => {
                self.last_good.insert(path.to_path_buf(), text);
                Some(v)
            }
            Err(e) => {
                let kept = self
                    .last_good
                    .get(path)
                    .and_then(|text| parse(text, &origin).ok());
                errors.push(match kept {
                    Some(_) => format!("{e} (its last good content stays in use)"),
                    None => format!("{e} (nothing from it is in use)"),
                });
                kept
            }
        }
    }
}

/// Reads everything once, with no earlier content to fall back on (`enforcer check`).
pub fn load(cfg: &Config) -> Loaded {
    FileSource::default().load(cfg)
}
