//! The file source: groups, prefix lists and Kubernetes objects read from the paths the
//! config names.
use crate::config::Config;
use crate::policy::model::GroupCatalog;
use crate::sources::{SourceError, ec2, kube::KubeObjects};

pub struct Snapshot {
    pub catalog: GroupCatalog,
    pub kube: KubeObjects,
}

fn read(path: &std::path::Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads everything. A file that cannot be read or parsed is an error for the whole
/// snapshot (the daemon then keeps the last good state); a bad *object* inside good
/// files fails only the pods that depend on it.
pub fn load(cfg: &Config) -> Result<Snapshot, SourceError> {
    let mut catalog = GroupCatalog::default();
    for p in &cfg.security_groups {
        let p = cfg.resolve(p);
        for g in ec2::parse_security_groups(&read(&p)?, &p.display().to_string())? {
            catalog.groups.insert(g.id.clone(), g);
        }
    }
    for p in &cfg.prefix_lists {
        let p = cfg.resolve(p);
        catalog.prefix_lists.extend(ec2::parse_prefix_lists(
            &read(&p)?,
            &p.display().to_string(),
        )?);
    }
    for (g, ips) in &cfg.group_members {
        catalog.members.entry(g.clone()).or_default().extend(ips);
    }
    let mut kube = KubeObjects::default();
    for p in &cfg.kubernetes {
        let p = cfg.resolve(p);
        kube.add_documents(&read(&p)?, &p.display().to_string())?;
    }
    Ok(Snapshot { catalog, kube })
}
