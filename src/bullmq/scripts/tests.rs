use super::*;
use crate::bullmq::QueueVersion;

/// One numbered list of a script header: (first number, names; a name ending in "…" is
/// variadic, and last).
#[derive(Debug, Default, PartialEq)]
struct List {
    first: usize,
    names: Vec<String>,
}

/// The `KEYS` and `ARGV` lists of a Lua file's header: a line `KEYS ...:` or `ARGV ...:`
/// starts one; each entry is a line `<n>[…] <name> ...`, numbered on from the list's first;
/// other lines continue an entry; a blank line ends the list.
fn header(lua: &str) -> (List, List) {
    let head = &lua[..lua.find("]]").expect("a header comment")];
    let (mut keys, mut argv) = (List::default(), List::default());
    let mut current: Option<&mut List> = None;
    for line in head.lines().map(str::trim) {
        if line.is_empty() {
            current = None;
        } else if (line.starts_with("KEYS") || line.starts_with("ARGV")) && line.ends_with(':') {
            let list = if line.starts_with("KEYS") {
                &mut keys
            } else {
                &mut argv
            };
            assert!(list.names.is_empty(), "two {line} lists");
            current = Some(list);
        } else if let Some(list) = current.as_deref_mut()
            && line.starts_with(|c: char| c.is_ascii_digit())
        {
            let digits: String = line.chars().take_while(char::is_ascii_digit).collect();
            let n: usize = digits.parse().unwrap();
            let rest = &line[digits.len()..];
            let (variadic, rest) = match rest.strip_prefix('…') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let name = rest.split_whitespace().next().expect("a name").to_string();
            if list.names.is_empty() {
                list.first = n;
            }
            assert_eq!(
                n,
                list.first + list.names.len(),
                "entry {line} out of order"
            );
            assert!(
                list.names.last().is_none_or(|l| !l.ends_with('…')),
                "{line} after a variadic"
            );
            list.names
                .push(if variadic { format!("{name}…") } else { name });
        }
    }
    (keys, argv)
}

/// The names a call must carry for `lists` read in order (each numbered on from the one
/// before), the variadic last one repeated as often as the call repeats it.
fn expected(lists: &[&List], built: &[&'static str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for list in lists {
        assert_eq!(list.first, out.len() + 1, "{list:?} does not follow on");
        out.extend(list.names.iter().cloned());
    }
    if let Some(v) = out
        .last()
        .and_then(|n| n.strip_suffix('…'))
        .map(str::to_string)
    {
        out.pop();
        let repeats = built.iter().rev().take_while(|n| **n == v).count();
        assert!(repeats >= 2, "the test must pass several {v}");
        out.extend(std::iter::repeat_n(v, repeats));
    }
    out
}

/// The highest `KEYS[n]` / `ARGV[n]` the code (not the header) of `lua` reads.
fn highest(lua: &str, table: &str) -> usize {
    let code = &lua[lua.find("]]").unwrap()..];
    code.match_indices(&format!("{table}["))
        .filter_map(|(i, m)| {
            let rest = &code[i + m.len()..];
            rest[..rest.find(']')?].parse().ok()
        })
        .max()
        .unwrap_or(0)
}

fn check(files: &[&str], call: &Call) {
    let lists: Vec<(List, List)> = files.iter().map(|f| header(f)).collect();
    let (keys, args) = call.names();
    let want_keys = expected(&lists.iter().map(|l| &l.0).collect::<Vec<_>>(), &keys);
    let want_args = expected(&lists.iter().map(|l| &l.1).collect::<Vec<_>>(), &args);
    assert_eq!(keys, want_keys, "KEYS of the builder and the headers");
    assert_eq!(args, want_args, "ARGV of the builder and the headers");
    let fixed_args = lists.iter().map(|l| l.1.names.len()).sum::<usize>();
    for f in files {
        assert!(
            highest(f, "KEYS") <= keys.len(),
            "a script reads a KEYS entry no header names"
        );
        assert!(
            highest(f, "ARGV") <= fixed_args,
            "a script reads an ARGV entry no header names"
        );
    }
}

fn request(keys: &QueueKeys) -> BatchRequest {
    BatchRequest {
        state: SourceState::Failed,
        version: QueueVersion::resolve(Some("6.7.0"), None).unwrap(),
        reset_attempts_made: true,
        reset_attempts_started: false,
        dry_run: false,
        ledger: Ledger {
            key: keys.ledger("ns/a"),
            owner: "tag".into(),
        },
        record: keys.record("ns/a"),
        ledger_ttl: Duration::from_secs(60),
        audit: None,
    }
}

const CORE: &str = include_str!("../core.lua");
const RETRY: &str = include_str!("../retry.lua");
const SELECT: &str = include_str!("../select.lua");

#[test]
fn the_retry_call_is_what_core_and_retry_lua_document() {
    let keys = QueueKeys::new("bull", "q");
    let req = request(&keys);
    let ids = ["1".to_string(), "2".into(), "3".into()];
    let args = RetryArgs {
        run: RunArgs::of(&keys, &req),
        record: &req.record,
        position_after: 3,
        ids: &ids,
    };
    let call = args.call();
    check(&[CORE, RETRY], &call);
    let values: Vec<&str> = call.args.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        values,
        [
            "failed", "mcpwr", "1", "0", "0", "tag", "60000", "", "3", "1", "2", "3"
        ]
    );
    assert_eq!(call.keys[2].1, "bull:q:failed");
    assert_eq!(call.keys[10].1, "bull:q:jobretry:ledger:run:ns/a");
    assert_eq!(call.keys[11].1, "bull:q:jobretry:record:run:ns/a");
}

#[test]
fn the_page_call_is_what_core_and_select_lua_document() {
    let keys = QueueKeys::new("bull", "q");
    let req = request(&keys);
    let names = ["a*".to_string(), "b?".into()];
    let cursor = Cursor {
        score: "5".into(),
        id: "7".into(),
    };
    let args = PageArgs {
        run: RunArgs::of(&keys, &req),
        record: &req.record,
        lock: keys.lock("failed"),
        holder: "ns/a",
        lock_ttl: Duration::from_secs(1),
        lower: None,
        upper: 99,
        max_jobs: 10,
        budget: 0,
        retry_budget: 7,
        success_rows: Some(3),
        want_totals: false,
        cursor: &cursor,
        matched: 4,
        reason_contains: "",
        expected_scanned: 8,
        work_budget: 100,
        bytes_budget: 200,
        guard: None,
        names: &names,
    };
    let call = args.call();
    check(&[CORE, SELECT], &call);
    let tail: Vec<&str> = call.args[8..].iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        tail,
        [
            "ns/a", "1000", "-inf", "99", "10", "1", "5", "7", "4", "", "8", "100", "200", "", "1",
            "7", "3", "0", "a*", "b?"
        ]
    );
    // A policy's run: its cap, its counts' TTL (two periods) and the keys of two periods.
    let day = Duration::from_secs(86_400);
    let guard = PolicyGuard::new(&keys, "uid-1", 3, day, 86_400_000 * 20_000 + 5);
    let call = PageArgs {
        guard: Some(&guard),
        ..args
    }
    .call();
    check(&[CORE, SELECT], &call);
    let at = |name: &str| {
        call.args
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(
        (at("guardMax"), at("guardTtl")),
        ("3".into(), "172800000".into())
    );
    let key = |name: &str| {
        call.keys
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(
        key("retriesNow"),
        "bull:q:jobretry:policy:uid-1:retries:20000"
    );
    assert_eq!(
        key("retriesBefore"),
        "bull:q:jobretry:policy:uid-1:retries:19999"
    );
}

#[test]
fn the_unlock_call_is_what_unlock_lua_documents() {
    let call = UnlockArgs {
        lock: "bull:q:jobretry:lock:state:failed".into(),
        holder: "ns/a",
    }
    .call();
    let (keys, args) = call.names();
    let (k, a) = header(UNLOCK_LUA);
    assert_eq!((k.first, a.first), (1, 1));
    assert_eq!((keys, args), (vec!["lock"], vec!["holder"]));
    assert_eq!(
        (k.names, a.names),
        (vec!["lock".to_string()], vec!["holder".to_string()])
    );
    assert_eq!(
        (highest(UNLOCK_LUA, "KEYS"), highest(UNLOCK_LUA, "ARGV")),
        (1, 1)
    );
}

#[test]
fn a_header_out_of_step_with_its_builder_is_caught() {
    // The check can fail: two entries swapped in the header.
    let swapped = CORE
        .replacen("6  owner", "6  ttl", 1)
        .replacen("7  ttl", "7  owner", 1);
    assert_ne!(swapped, CORE);
    let keys = QueueKeys::new("bull", "q");
    let req = request(&keys);
    let ids = ["1".to_string(), "2".into()];
    let call = RetryArgs {
        run: RunArgs::of(&keys, &req),
        record: &req.record,
        position_after: 0,
        ids: &ids,
    }
    .call();
    let caught = std::panic::catch_unwind(|| check(&[&swapped, RETRY], &call));
    assert!(caught.is_err());
}

#[test]
fn the_audit_line_names_the_run_the_requester_and_the_reason_as_json_strings() {
    let run = AuditRun {
        state: SourceState::Failed,
        run: "payments/incident-4711",
        run_key: "payments/incident-4711",
        requester: Some("alice"),
        reason: Some("db \"failover\"\nINC-4711"),
    };
    assert_eq!(
        run.line(),
        r#"jobretry: retried from failed by run="payments/incident-4711" runKey="payments/incident-4711" requester="alice" reason="db \"failover\"\nINC-4711""#
    );
    let unknown = AuditRun {
        state: SourceState::Completed,
        requester: None,
        reason: Some(""),
        ..run
    };
    assert!(
        unknown.line().ends_with("requester=null reason=null"),
        "{}",
        unknown.line()
    );
    assert!(
        unknown
            .line()
            .starts_with("jobretry: retried from completed by")
    );
}

#[test]
fn the_audit_line_is_core_argv_8_and_empty_without_audit() {
    let keys = QueueKeys::new("bull", "q");
    let mut req = request(&keys);
    let ids = ["1".to_string(), "2".into()];
    let call = |req: &BatchRequest| {
        RetryArgs {
            run: RunArgs::of(&keys, req),
            record: &req.record,
            position_after: 2,
            ids: &ids,
        }
        .call()
    };
    assert_eq!(call(&req).args[7], ("audit", String::new()));
    req.audit = Some("jobretry: retried from failed by run=\"ns/a\"".into());
    assert_eq!(
        call(&req).args[7].1,
        "jobretry: retried from failed by run=\"ns/a\""
    );
}
