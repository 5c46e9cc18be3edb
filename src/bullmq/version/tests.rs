use super::*;

fn node(v: &str) -> QueueVersion {
    QueueVersion::resolve(Some(v), None).unwrap()
}

/// The release just before `v` among published versions (patch, else minor, else major).
fn before(v: Semver) -> Semver {
    match v {
        Semver(a, b, c) if c > 0 => Semver(a, b, c - 1),
        Semver(a, b, _) if b > 0 => Semver(a, b - 1, 99),
        Semver(a, _, _) => Semver(a - 1, 99, 99),
    }
}

#[test]
fn every_boundary_switches_exactly_its_feature_on() {
    for (feature, first) in NODE_BOUNDARIES {
        let at = QueueVersion::for_node(first).unwrap();
        assert!(at.has(feature), "{feature:?} at {first}");
        let below = before(first);
        if below.0 >= 5 {
            let b = QueueVersion::for_node(below).unwrap();
            assert!(!b.has(feature), "{feature:?} at {below}");
            // Only this feature differs between the two sides of its boundary.
            for (other, _) in NODE_BOUNDARIES.iter().filter(|(f, _)| *f != feature) {
                assert_eq!(at.has(*other), b.has(*other), "{other:?} around {first}");
            }
        }
    }
}

#[test]
fn the_boundaries_read_from_the_tarballs() {
    let flags = |v: &str| node(v).script_flags();
    assert_eq!(flags("5.0.0"), "");
    assert_eq!(flags("5.1.6"), "");
    assert_eq!(flags("5.1.7"), "m");
    assert_eq!(flags("5.8.9"), "m");
    assert_eq!(flags("5.9.0"), "mc");
    assert_eq!(flags("5.58.1"), "mc");
    assert_eq!(flags("5.58.2"), "mcp");
    assert_eq!(flags("5.81.5"), "mcp");
    assert_eq!(flags("6.0.0"), "mcpw");
    assert_eq!(flags("6.3.11"), "mcpw");
    assert_eq!(flags("6.3.15"), "mcpwr");
    assert_eq!(flags("6.7.0"), "mcpwr");
    assert!(!node("5.65.1").has(Feature::ResetOptions));
    assert!(node("5.66.0").has(Feature::ResetOptions));
    assert!(!node("5.79.1").has(Feature::ParentFailedHashFix));
    assert!(node("5.79.2").has(Feature::ParentFailedHashFix));
}

#[test]
fn meta_version_is_detected_and_the_spec_overrides_it() {
    let detected = QueueVersion::resolve(None, Some("bullmq:6.7.0")).unwrap();
    assert_eq!(detected.label, "6.7.0");
    let given = QueueVersion::resolve(Some("5.81.5"), Some("bullmq:6.7.0")).unwrap();
    assert_eq!(given.node, Semver(5, 81, 5));
    let pro = QueueVersion::resolve(Some("6.2.0"), Some("bullmq-pro:7.1.0")).unwrap();
    assert_eq!(pro.label, "6.2.0");
}

#[test]
fn no_version_anywhere_is_refused_with_the_fix() {
    for (spec, meta) in [(None, None), (Some(""), Some("")), (Some("  "), None)] {
        let err = QueueVersion::resolve(spec, meta).unwrap_err();
        assert_eq!(err, VersionError::Unknown);
        assert!(err.to_string().contains("spec.queue.bullmqVersion"));
    }
}

#[test]
fn python_versions_map_to_the_node_scripts_they_ship() {
    let py = |v: &str| node(&format!("python:{v}"));
    assert_eq!(py("2.0.0").node, Semver(5, 0, 0));
    assert_eq!(py("2.2.1").node, Semver(5, 0, 0));
    assert_eq!(py("2.2.2").node, Semver(5, 1, 7));
    assert_eq!(py("2.16.9").node, Semver(5, 58, 2));
    assert_eq!(py("2.17.0").node, Semver(5, 66, 0));
    assert_eq!(py("2.25.4").node, Semver(5, 79, 2));
    assert_eq!(py("3.0.0").node, Semver(6, 0, 0));
    assert_eq!(py("3.3.3").node, Semver(6, 0, 0));
    assert_eq!(py("3.3.4").node, Semver(6, 3, 15));
    assert_eq!(py("3.4.4").node, Semver(6, 3, 15));
    assert_eq!(py("3.4.4").label, "python:3.4.4");
    assert!(
        QueueVersion::resolve(Some("python:1.9.0"), None)
            .unwrap_err()
            .to_string()
            .contains("Python client 2.x and 3.x")
    );
    assert!(QueueVersion::resolve(Some("python:4.0.0"), None).is_err());
}

#[test]
fn unsupported_and_unreadable_versions_are_refused_with_a_reason() {
    let err = QueueVersion::resolve(None, Some("bullmq:4.17.0")).unwrap_err();
    assert!(err.to_string().contains("4.17.0") && err.to_string().contains("5.x and 6.x"));
    assert!(QueueVersion::resolve(None, Some("bullmq:7.0.0")).is_err());
    assert!(
        QueueVersion::resolve(None, Some("bullmq-pro:7.1.0"))
            .unwrap_err()
            .to_string()
            .contains("bullmqVersion")
    );
    assert!(matches!(
        QueueVersion::resolve(Some("six"), None),
        Err(VersionError::Unparseable(_))
    ));
}

#[test]
fn reset_options_need_a_release_whose_job_retry_has_them() {
    assert!(node("5.65.1").check_options(false, false).is_ok());
    let err = node("5.65.1").check_options(true, false).unwrap_err();
    assert!(
        err.contains("resetAttemptsMade") && err.contains("before 5.66.0"),
        "{err}"
    );
    assert!(node("5.66.0").check_options(true, true).is_ok());
    let err = node("python:2.16.0")
        .check_options(false, true)
        .unwrap_err();
    assert!(err.contains("before python:2.17.0"), "{err}");
}

proptest::proptest! {
    /// A version written as x.y.z parses back to itself, with any of the prefixes the
    /// queue's meta or the spec may carry; any other text never panics the parser.
    #[test]
    fn versions_parse_back_and_nothing_panics(
        (a, b, c) in (0u32..100, 0u32..1000, 0u32..1000),
        junk in ".{0,24}",
    ) {
        let text = format!("{a}.{b}.{c}");
        proptest::prop_assert_eq!(Semver::parse(&text), Some(Semver(a, b, c)));
        let _ = Semver::parse(&junk);
        let _ = QueueVersion::resolve(Some(&junk), None);
        let _ = QueueVersion::resolve(None, Some(&format!("bullmq:{junk}")));
        let resolved = QueueVersion::resolve(None, Some(&format!("bullmq:{text}")));
        let supported = (5..=6).contains(&a);
        proptest::prop_assert_eq!(resolved.is_ok(), supported, "{}", text);
    }
}
