//! Versioned schema migrations, the same scheme for every backend.
//!
//! Each backend lists its schema as numbered SQL steps ([`Migration`]), 1, 2, 3, … in order. A
//! table `schema_version` records the steps a database has had (one row per step, with its name
//! and when it ran). At open, a backend reads the highest recorded version inside one transaction,
//! applies the missing steps in order and records them, and commits: a failed step changes
//! nothing. A database whose version is above the last step this build knows was upgraded by a
//! newer vouch; it is refused ([`StoreError::SchemaTooNew`]), since this build would misread it.
//!
//! A step is never edited once released: a schema change is a new step. The backends keep the same
//! numbering for the same change, so one version number means one logical schema everywhere.

use crate::StoreError;

/// One schema step.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Its number: the position in the list, from 1.
    pub(crate) version: u32,
    /// What it does, recorded with it.
    pub(crate) name: &'static str,
    /// The statements (one or more, `;`-separated).
    pub(crate) sql: &'static str,
}

/// The version a database has once every step of `steps` ran.
pub(crate) fn latest(steps: &[Migration]) -> u32 {
    steps.last().map_or(0, |m| m.version)
}

/// The steps a database at version `current` still needs, in order; an error if the database is
/// newer than `steps` know.
pub(crate) fn pending(current: u32, steps: &[Migration]) -> Result<&[Migration], StoreError> {
    let supported = latest(steps);
    if current > supported {
        return Err(StoreError::SchemaTooNew { found: current, supported });
    }
    Ok(steps.get(current as usize..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_from_one_without_gaps_in_every_backend() {
        for steps in [crate::sqlite::MIGRATIONS, crate::postgres::MIGRATIONS] {
            for (i, m) in steps.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "step `{}`", m.name);
            }
        }
        let names = |s: &[Migration]| s.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(
            names(crate::sqlite::MIGRATIONS),
            names(crate::postgres::MIGRATIONS),
            "one version means one logical schema in both backends"
        );
    }

    #[test]
    fn pending_steps_and_newer_databases() {
        const STEPS: &[Migration] =
            &[Migration { version: 1, name: "a", sql: "" }, Migration { version: 2, name: "b", sql: "" }];
        assert_eq!(pending(0, STEPS).unwrap().len(), 2);
        assert_eq!(pending(1, STEPS).unwrap()[0].name, "b");
        assert!(pending(2, STEPS).unwrap().is_empty());
        let err = pending(3, STEPS).unwrap_err().to_string();
        assert!(err.contains("version 3") && err.contains("newer than this vouch"), "{err}");
    }
}
