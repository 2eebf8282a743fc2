//! Property tests: whatever bytes a browser sends as a frame, or a backend publishes
//! on a backplane channel, the parsers answer with a frame or a documented error, and
//! never panic.

use herald::error::ErrorCode;
use herald::protocol::{PayloadKind, check_payload, parse_client_frame};
use proptest::prelude::*;

/// Strings that look like frames often enough to reach deep into the parser.
fn framish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("id"),
        Just("op"),
        Just("channel"),
        Just("data"),
        Just("recover"),
        Just("since"),
        Just("limit"),
        Just("token"),
        Just("idempotency_key"),
        Just("type"),
        Just("client"),
        Just("offset"),
        Just("epoch"),
    ];
    let value = prop_oneof![
        Just("\"subscribe\"".to_string()),
        Just("\"publish\"".to_string()),
        Just("\"history\"".to_string()),
        Just("\"message\"".to_string()),
        Just("\"join\"".to_string()),
        Just("\"c\"".to_string()),
        Just("null".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("{\"epoch\":\"e\",\"offset\":3}".to_string()),
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_never_panic_on_arbitrary_text(text in "\\PC{0,200}") {
        if let Err(e) = parse_client_frame(&text) {
            prop_assert_eq!(e.code, ErrorCode::BadRequest);
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn client_frames_never_panic_on_framish_objects(text in framish()) {
        match parse_client_frame(&text) {
            Ok(frame) => prop_assert!(frame.id.is_none_or(|id| id <= herald::protocol::MAX_ID)),
            Err(e) => prop_assert_eq!(e.code, ErrorCode::BadRequest),
        }
    }

    #[test]
    fn backplane_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = check_payload("c", &text);
    }

    #[test]
    fn only_well_formed_payloads_are_forwarded(text in framish()) {
        if let Ok(kind) = check_payload("c", &text) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&v["channel"], "c");
            match kind {
                PayloadKind::Message { .. } => {
                    prop_assert_eq!(&v["type"], "message");
                    prop_assert!(v.get("data").is_some());
                }
                PayloadKind::Presence => prop_assert!(v["client"].is_object()),
            }
        }
    }
}
