//! Property tests for everything that parses peer- or user-supplied text or bytes:
//! arbitrary input never panics, and valid values round-trip.
use ambit_core::hbone::{forwarded_for, parse_forwarded_for};
use ambit_core::x509::identity_of;
use ambit_core::Identity;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn identity_parse_never_panics(s in ".{0,300}") {
        let _ = s.parse::<Identity>();
    }

    #[test]
    fn identity_parse_never_panics_near_valid(
        td in "[a-z0-9._-]{0,20}", ns in "[A-Za-z0-9._ /-]{0,12}", sa in "[A-Za-z0-9._/-]{0,12}"
    ) {
        let _ = format!("spiffe://{td}/ns/{ns}/sa/{sa}").parse::<Identity>();
    }

    #[test]
    fn valid_identities_round_trip(
        td in "[a-z0-9][a-z0-9.-]{0,30}", ns in "[a-z0-9][a-z0-9-]{0,20}", sa in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}"
    ) {
        prop_assume!(sa != "." && sa != "..");
        let id = Identity::new(&td, &ns, &sa).unwrap();
        let back: Identity = id.to_string().parse().unwrap();
        prop_assert_eq!(back, id);
    }

    #[test]
    fn forwarded_parse_never_panics(s in ".{0,200}") {
        let _ = parse_forwarded_for(&s);
    }

    #[test]
    fn forwarded_round_trips(a in any::<std::net::SocketAddr>()) {
        // Scope ids and flow info are not carried on the wire.
        let a = std::net::SocketAddr::new(a.ip(), a.port());
        prop_assert_eq!(parse_forwarded_for(&forwarded_for(a)), Some(a));
    }

    #[test]
    fn certificate_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = identity_of(&bytes);
        let _ = ambit_core::x509::validity_of(&bytes);
    }
}
