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
use crate::sources::{SourceError, ec2, rule_ids};

pub struct Snapshot {
    pub catalog: GroupCatalog,
    pub kube: KubeObjects,
}

/// What was read, and what could not be: per-file errors (that file's last good content
/// is in the snapshot) and objects that could not be named.
pub struct Loaded {
    pub snapshot: Snapshot,
    pub errors: Vec<String>,
    /// Files that could not be read or parsed now (of `errors`; the rest are objects
    /// that were read but are unusable).
    pub unreadable: usize,
}

/// The last good parse of each file, kept across reloads with the identity of the file
/// it came from (device, inode, size, modification time): an unchanged file is not
/// read again, and its groups stay the same shared objects (which the policy cache then
/// knows unchanged at a pointer compare). A file that can't be read or parsed any more
/// keeps contributing its last good parse.
#[derive(Default)]
pub struct FileSource {
    last_good: HashMap<PathBuf, (Option<Stamp>, Box<dyn std::any::Any + Send>)>,
    /// Files that failed in the load under way.
    unreadable: usize,
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

/// The file's stamp, if it can be trusted to change with the content. Modification
/// times tick coarsely (a jiffy on some filesystems): a file changed again within the
/// tick it was read in keeps its stamp. As git does with "racily clean" entries, a
/// stamp younger than two seconds is not trusted: such a file is read again.
fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let age = m.modified().ok()?.elapsed().ok()?;
    (age > std::time::Duration::from_secs(2)).then(|| Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
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
        self.unreadable = 0;
        for p in &cfg.security_groups {
            if let Some(g) = self.parse(&cfg.resolve(p), &mut errors, ec2::parse_security_groups) {
                errors.extend(g.unnamed.iter().cloned());
                catalog.add_groups(g);
            }
        }
        for p in &cfg.security_group_rules {
            if let Some(ids) = self.parse(&cfg.resolve(p), &mut errors, rule_ids::parse) {
                rule_ids::attach(&mut catalog, &ids);
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
        let unreadable = self.unreadable;
        errors.extend(kube.errors.iter().cloned());
        Loaded {
            snapshot: Snapshot { catalog, kube },
            errors,
            unreadable,
        }
    }

    /// Parses a file (unless unchanged since its last good parse), or gives its last
    /// good parse when it can't be read or parsed now.
    fn parse<T: Clone + Send + 'static>(
        &mut self,
        path: &Path,
        errors: &mut Vec<String>,
        parse: impl Fn(&str, &str) -> Result<T, SourceError>,
    ) -> Option<T> {
        let origin = path.display().to_string();
        let now = stamp(path);
        let last = |s: &Self| {
            s.last_good
                .get(path)
                .and_then(|(_, v)| v.downcast_ref::<T>().cloned())
        };
        if let (Some((Some(was), _)), Some(now)) = (self.last_good.get(path), now)
            && *was == now
            && let Some(v) = last(self)
        {
            return Some(v);
        }
        match read(path).and_then(|text| parse(&text, &origin)) {
            Ok(v) => {
                self.last_good
                    .insert(path.to_path_buf(), (now, Box::new(v.clone())));
                Some(v)
            }
            Err(e) => {
                self.unreadable += 1;
                let kept = last(self);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(groups: &Path) -> Config {
        serde_yaml::from_str(&format!(
            "node: {{trunkInterface: t, gatewayMac: '02:00:00:00:00:01'}}\nsecurityGroups: [{}]\n",
            groups.display()
        ))
        .unwrap()
    }

    const ONE: &str = r#"{"SecurityGroups":[{"GroupId":"sg-a","IpPermissions":[]}]}"#;

    /// Backdates a file past the racy window, as if written long ago.
    fn age(path: &Path) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(10))
            .unwrap();
    }

    #[test]
    fn an_unchanged_file_is_not_parsed_again_and_a_broken_one_keeps_its_last_parse() {
        let dir = std::env::temp_dir().join(format!("podsg-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("groups.json");
        std::fs::write(&path, ONE).unwrap();
        age(&path);
        let cfg = config(&path);
        let mut src = FileSource::default();
        let a = src.load(&cfg).snapshot.catalog.groups["sg-a"].clone();
        let b = src.load(&cfg).snapshot.catalog.groups["sg-a"].clone();
        assert!(std::sync::Arc::ptr_eq(&a, &b), "the same parse, shared");
        // Rewritten just now with the same length: too recent to trust, read again.
        std::fs::write(&path, ONE.replace("sg-a", "sg-b")).unwrap();
        let l = src.load(&cfg);
        assert!(l.snapshot.catalog.groups.contains_key("sg-b"));
        // Broken: the last good parse stays, and the error says so.
        std::fs::write(&path, "{").unwrap();
        let l = src.load(&cfg);
        assert!(l.snapshot.catalog.groups.contains_key("sg-b"));
        assert!(
            l.errors[0].contains("last good content stays"),
            "{:?}",
            l.errors
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Proves a rules file names the groups' rules by their ids, and the watch covers it.
    #[test]
    fn a_rules_file_names_the_rules() {
        use crate::model::group::Direction;
        let dir = std::env::temp_dir().join(format!("podsg-rule-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let groups = dir.join("groups.json");
        std::fs::write(
            &groups,
            r#"{"SecurityGroups":[{"GroupId":"sg-a","IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"IpRanges":[{"CidrIp":"10.0.0.0/16"}]}]}]}"#,
        )
        .unwrap();
        let rules = dir.join("rules.json");
        std::fs::write(
            &rules,
            r#"{"SecurityGroupRules":[{"SecurityGroupRuleId":"sgr-0abc","GroupId":"sg-a","IsEgress":false,"IpProtocol":"tcp","FromPort":80,"ToPort":80,"CidrIpv4":"10.0.0.0/16"}]}"#,
        )
        .unwrap();
        let mut cfg = config(&groups);
        cfg.security_group_rules = vec![rules.clone()];
        let l = FileSource::default().load(&cfg);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(
            l.snapshot.catalog.rule_name("sg-a", Direction::Inbound, 0),
            "sg-a inbound rule #0 (sgr-0abc)"
        );
        let watched = crate::watch::watched_files(&dir.join("enforcer.yaml"), &cfg);
        assert!(watched.iter().any(|p| p.ends_with("rules.json")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
