//! What a hostile client would try, each refused, with nothing published or
//! subscribed; token expiry and refresh. The RSA key pair in tests/fixtures exists
//! only for these tests.

mod support;

use std::time::Duration;

use herald::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "test-secret-test-secret-test-secret!";
const API_KEY: &str = "test-api-key-0123456789";
const RULES: &str = r#"
[auth]
api_keys = ["test-api-key-0123456789"]
jwt_hs256_secret = "test-secret-test-secret-test-secret!"
allowed_origins = ["https://app.example.com"]

[limits]
max_subscriptions = 3
messages_per_sec = 20
max_body_bytes = 1024

[default_namespace]
publish = "authenticated"

[namespaces.user]
subscribe = "granted"
publish = "granted"
"#;

fn now() -> u64 {
    unix_now()
}

fn hs256(claims: Value) -> String {
    sign_hs256(SECRET, &claims)
}

fn token_for(user: &str, secs: u64) -> String {
    hs256(json!({"sub": user, "exp": now() + secs, "channels": [format!("user:{user}:*")]}))
}

fn secured() -> Config {
    config_from_toml(None, "sec", RULES)
}

async fn api_publish(addr: std::net::SocketAddr, key: Option<&str>, body: Value) -> u16 {
    let mut req = http()
        .post(format!("http://{addr}/api/publish"))
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_without_a_valid_token_are_refused() {
    let node = start(secured()).await;
    let a = node.addr;
    assert_eq!(upgrade_status(a, "", None).await, 401, "no token");
    let expired = hs256(json!({"sub": "u1", "exp": now() - 10}));
    assert_eq!(
        upgrade_status(a, &format!("?token={expired}"), None).await,
        401,
        "expired"
    );
    let wrong = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u1"}),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(a, &format!("?token={wrong}"), None).await,
        401,
        "wrong signature"
    );
    // alg: none (header {"alg":"none","typ":"JWT"}, payload {"sub":"admin"}).
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiJ9.";
    assert_eq!(
        upgrade_status(a, &format!("?token={none}"), None).await,
        401,
        "alg none"
    );
    // An RS256 token where only HS256 is configured.
    let rsa = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa-test-private.pem"
    ))
    .unwrap();
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "u1"}),
        &EncodingKey::from_rsa_pem(&rsa).unwrap(),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(a, &format!("?token={rs}"), None).await,
        401,
        "unconfigured algorithm"
    );
    assert_eq!(
        upgrade_status(a, "?token=garbage", None).await,
        401,
        "garbage"
    );
    // A valid token from a foreign origin.
    let good = token_for("u1", 60);
    assert_eq!(
        upgrade_status(a, &format!("?token={good}"), Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(
            a,
            &format!("?token={good}"),
            Some("https://app.example.com")
        )
        .await,
        101
    );
    assert_eq!(
        upgrade_status(a, &format!("?token={good}"), None).await,
        101,
        "no Origin: not a browser"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_confusion_is_refused() {
    // RS256 configured with a public key: an HS256 token "signed" with that public key
    // (the classic confusion attack) must not pass.
    let public = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa-test-public.pem"
    );
    let toml =
        format!("[auth]\njwt_algorithms = [\"RS256\"]\njwt_public_key_file = \"{public}\"\n");
    let node = start(config_from_toml(None, "rs", &toml)).await;
    let pem = std::fs::read(public).unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "admin"}),
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(node.addr, &format!("?token={forged}"), None).await,
        401
    );
    let rsa = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa-test-private.pem"
    ))
    .unwrap();
    let real = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "u1"}),
        &EncodingKey::from_rsa_pem(&rsa).unwrap(),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(node.addr, &format!("?token={real}"), None).await,
        101
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_grants_and_glob_escapes() {
    let node = start(secured()).await;
    let mut victim = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u2", 60)))
        .await
        .unwrap();
    victim.subscribe("user:u2:inbox").await;
    let mut c = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u1", 60)))
        .await
        .unwrap();
    assert!(
        c.request(json!({"op": "subscribe", "channel": "user:u1:inbox"}))
            .await
            .get("result")
            .is_some()
    );
    for other in [
        "user:u2:inbox",
        "user:u1",
        "user:u10:inbox",
        "user:u1x:a",
        "user:*",
        "user:u1:*",
    ] {
        let r = c
            .request(json!({"op": "subscribe", "channel": other}))
            .await;
        let code = r["error"]["code"].as_str().unwrap_or("");
        assert!(code == "forbidden" || code == "bad_request", "{other}: {r}");
    }
    let r = c.publish("user:u2:inbox", json!("spoof")).await;
    assert_eq!(r["error"]["code"], "forbidden");
    assert!(
        victim
            .next_message(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing was published"
    );
    // Anonymous-by-sub token: valid but not authenticated.
    let anon = hs256(json!({"exp": now() + 60}));
    let mut a = Client::connect_path(node.addr, &format!("/ws?token={anon}"))
        .await
        .unwrap();
    let r = a.publish("lobby", json!(1)).await;
    assert_eq!(r["error"]["code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_http_api() {
    let node = start(secured()).await;
    let mut c = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u1", 60)))
        .await
        .unwrap();
    c.subscribe("lobby").await;
    let body = json!({"channel": "lobby", "data": 1});
    assert_eq!(api_publish(node.addr, None, body.clone()).await, 401);
    assert_eq!(
        api_publish(node.addr, Some("test-api-key-0123456788"), body.clone()).await,
        401
    );
    assert_eq!(api_publish(node.addr, Some(""), body.clone()).await, 401);
    assert!(c.next_message(Duration::from_millis(300)).await.is_none());
    assert_eq!(
        api_publish(node.addr, Some(API_KEY), body.clone()).await,
        200
    );
    assert_eq!(c.next_message(WAIT).await.unwrap()["data"], 1);
    // Oversized body: 413, nothing published.
    let big = json!({"channel": "lobby", "data": "x".repeat(2000)});
    let r = http()
        .post(format!("http://{}/api/publish", node.addr))
        .bearer_auth(API_KEY)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "limit_exceeded");
    assert!(c.next_message(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_limits_and_rate_limits() {
    let node = start(secured()).await;
    let mut c = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u1", 60)))
        .await
        .unwrap();
    for ch in ["a", "b", "c"] {
        c.subscribe(ch).await;
    }
    let r = c.request(json!({"op": "subscribe", "channel": "d"})).await;
    assert_eq!(r["error"]["code"], "limit_exceeded");

    // An oversized frame closes with 1009.
    let mut big = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u3", 60)))
        .await
        .unwrap();
    big.send_text(&format!(
        r#"{{"op":"publish","channel":"a","data":"{}"}}"#,
        "x".repeat(70_000)
    ))
    .await;
    assert_eq!(big.closed(WAIT).await, Some(Closed::Code(1009)));
    assert!(c.next_message(Duration::from_millis(200)).await.is_none());

    // messages_per_sec = 20: a burst of 100 gets rate_limited beyond the 40-frame bucket.
    let mut flood = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u4", 60)))
        .await
        .unwrap();
    for i in 0..100 {
        flood
            .send_text(&format!(r#"{{"id":{i},"op":"ping"}}"#))
            .await;
    }
    let mut ok = 0;
    let mut limited = 0;
    while ok + limited < 100 {
        let f = flood
            .next_frame(WAIT)
            .await
            .expect("a reply for every frame");
        if f["type"] != "reply" {
            continue;
        }
        if f.get("result").is_some() {
            ok += 1;
        } else if f["error"]["code"] == "rate_limited" {
            limited += 1;
        } else {
            panic!("{f}");
        }
    }
    assert!(
        (38..=45).contains(&ok),
        "bucket of two seconds: {ok} served"
    );
    assert_eq!(ok + limited, 100);

    // Malformed frames count too, and sustained abuse (over twice the rate for five
    // seconds) ends with 1008.
    let started = std::time::Instant::now();
    let code = loop {
        flood
            .send_raw(tokio_tungstenite::tungstenite::Message::Text(
                "not json".into(),
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some(f) = flood.next_frame(Duration::from_millis(1)).await
            && f["type"] == "closed"
        {
            break f["code"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "abuse was never closed"
        );
    };
    assert_eq!(code, json!(1008));
    assert!(started.elapsed() >= Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_with_4001_unless_refreshed() {
    let node = start(secured()).await;
    let mut short = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u1", 2)))
        .await
        .unwrap();
    short.subscribe("user:u1:inbox").await;
    assert_eq!(
        short.closed(Duration::from_secs(6)).await,
        Some(Closed::Code(4001))
    );

    let mut kept = Client::connect_path(node.addr, &format!("/ws?token={}", token_for("u1", 2)))
        .await
        .unwrap();
    kept.subscribe("user:u1:inbox").await;
    // Refresh with another user's token, or one that drops the grant: refused.
    let r = kept
        .request(json!({"op": "refresh", "token": token_for("u2", 60)}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
    let narrow = hs256(json!({"sub": "u1", "exp": now() + 60}));
    let r = kept
        .request(json!({"op": "refresh", "token": narrow}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
    let r = kept
        .request(json!({"op": "refresh", "token": "garbage"}))
        .await;
    assert_eq!(r["error"]["code"], "unauthorized");
    let r = kept
        .request(json!({"op": "refresh", "token": token_for("u1", 60)}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Still connected and still subscribed.
    let status = api_publish(
        node.addr,
        Some(API_KEY),
        json!({"channel": "user:u1:inbox", "data": "after"}),
    )
    .await;
    assert_eq!(status, 200);
    let m = kept
        .next_message(WAIT)
        .await
        .expect("still subscribed after refresh");
    assert_eq!(m["data"], "after");
}

#[tokio::test]
async fn a_public_address_needs_keys_or_insecure() {
    let mut cfg = Config::from_toml("[server]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    assert!(herald::config::check_startup(cfg.clone()).is_err());
    cfg.insecure = true;
    assert!(herald::config::check_startup(cfg.clone()).is_ok());
    cfg.insecure = false;
    cfg.auth.api_keys = vec![API_KEY.into()];
    assert!(
        herald::config::check_startup(cfg.clone()).is_err(),
        "API keys alone are not enough"
    );
    cfg.auth.jwt_hs256_secret = Some(SECRET.into());
    assert!(herald::config::check_startup(cfg).is_ok());
}
