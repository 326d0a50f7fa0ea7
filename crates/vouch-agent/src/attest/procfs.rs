//! Parsers for the `/proc` and `/etc` files workload attestation reads (pure functions over text),
//! and [`read_proc_file`], the reader of the small `/proc` files.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

/// Reads a small `/proc` file (status, stat, cgroup, fdinfo) whole.
///
/// Why not `std::fs::read_to_string`: `/proc` files report size 0, so it starts with a 32-byte
/// probe and grows the buffer, about seven `read` calls for a 1.5 KiB status file; each call on
/// `/proc` is a kernel round trip, and attestation reads four such files on every Workload API
/// call. With room for the whole file the first call gets it and the second says end of file.
pub fn read_proc_file(path: &Path) -> std::io::Result<String> {
    let mut text = String::with_capacity(4096);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The identity facts of `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Parses `/proc/<pid>/status`; `None` when a required line is missing or malformed.
pub fn parse_status(text: &str) -> Option<ProcStatus> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    // "Uid:\treal\teffective\tsaved\tfs"
    let second = |name: &str| field(name)?.split_whitespace().nth(1)?.parse::<u32>().ok();
    let groups =
        field("Groups:")?.split_whitespace().map(|g| g.parse::<u32>().ok()).collect::<Option<Vec<u32>>>()?;
    Some(ProcStatus { uid: second("Uid:")?, gid: second("Gid:")?, groups })
}

/// The start time (field 22, clock ticks since boot) from `/proc/<pid>/stat`. The command name in
/// field 2 may contain spaces and parentheses, so parsing starts after its last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name come fields 3..; the start time is field 22, the 20th of these.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Id to name from `/etc/passwd` or `/etc/group` text (`name:x:id:...`).
pub fn parse_id_names(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let id = f.next()?.parse().ok()?;
            (!name.is_empty()).then(|| (id, name.to_owned()))
        })
        .collect()
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo/<fd>` text: `Some(-1)` once the process has
/// exited (Linux 5.12+), `None` when the line is absent (not a pidfd).
pub fn parse_fdinfo_pid(text: &str) -> Option<i32> {
    text.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status() {
        let text = "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1000\t1001\nGid:\t100\t101\t100\t101\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(parse_status(text), Some(ProcStatus { uid: 1001, gid: 101, groups: vec![4, 24, 27] }));
        assert_eq!(
            parse_status("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap().groups,
            Vec::<u32>::new()
        );
        assert_eq!(parse_status("Uid:\t0\nGid:\t0\t0\nGroups:\n"), None, "missing effective uid");
        assert_eq!(parse_status("Gid:\t0\t0\nGroups:\n"), None);
        assert_eq!(parse_status("Uid:\t0\tx\nGid:\t0\t0\nGroups:\n"), None);
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[19] = "987654".into();
        let stat = format!("1234 (evil) name (x)) {}", fields.join(" "));
        assert_eq!(parse_start_time(&stat), Some(987654));
        assert_eq!(parse_start_time("1234 (short) S 1"), None);
        assert_eq!(parse_start_time("no parens"), None);
    }

    #[test]
    fn names_and_fdinfo() {
        let m = parse_id_names("root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n:x:5:5\n");
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&33).map(String::as_str), Some("www-data"));
        assert_eq!(m.len(), 2);
        assert_eq!(
            parse_fdinfo_pid("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nPid:\t4242\nNSpid:\t4242\n"),
            Some(4242)
        );
        assert_eq!(parse_fdinfo_pid("Pid:\t-1\n"), Some(-1));
        assert_eq!(parse_fdinfo_pid("pos:\t0\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,300}") {
            let _ = parse_status(&text);
            let _ = parse_start_time(&text);
            let _ = parse_id_names(&text);
            let _ = parse_fdinfo_pid(&text);
        }
    }
}
