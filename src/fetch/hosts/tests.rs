use std::time::SystemTime;

use futures_util::FutureExt;

use super::*;

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

/// No backoff to wait out: each step of the probe logic shows at once.
const NO_PAUSE: Backoff = Backoff {
    first: Duration::ZERO,
    max: Duration::ZERO,
};

fn go(admission: Admission) -> Admitted {
    match admission {
        Admission::Go(admitted) => admitted,
        Admission::Wait(wait) => panic!("expected to go, told: {}", wait.reason),
    }
}

fn wait(admission: Admission) -> Wait {
    match admission {
        Admission::Go(_) => panic!("expected to wait"),
        Admission::Wait(wait) => wait,
    }
}

#[test]
fn a_host_is_its_scheme_name_and_port() {
    let key = |text| HostKey::of(&url(text));
    assert_eq!(key("http://A.example/x"), key("http://a.example:80/y"));
    assert_ne!(key("http://a.example/x"), key("https://a.example/x"));
    assert_ne!(key("http://a.example/x"), key("http://a.example:8080/x"));
    assert_eq!(
        key("https://a.example/x").unwrap().to_string(),
        "https://a.example:443"
    );
    assert_eq!(key("file:///m/x"), None);
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28:00
    let cases = [
        ("120", Some(Duration::from_secs(120))),
        (" 0 ", Some(Duration::ZERO)),
        (
            "Wed, 21 Oct 2015 07:28:05 GMT",
            Some(Duration::from_secs(5)),
        ),
        ("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO)),
        (
            "99999999999999999999999",
            Some(Duration::from_secs(u64::MAX)),
        ),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
    ];
    for (value, expected) in cases {
        assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
    }
}

#[test]
fn backoff_doubles_up_to_its_cap_with_equal_jitter() {
    let backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(10),
    };
    let after: Vec<u64> = (1..=7)
        .map(|n| backoff.after(n).as_millis() as u64)
        .collect();
    assert_eq!(after, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    assert_eq!(backoff.after(u32::MAX), Duration::from_secs(10));
    assert_eq!(backoff.jittered(2, 0.0), Duration::from_millis(500));
    assert_eq!(backoff.jittered(2, 0.5), Duration::from_millis(750));
    assert!(backoff.jittered(2, 0.999_999) < Duration::from_secs(1));
}

/// A long backoff: whatever must wait, waits for the whole test.
const LONG: Backoff = Backoff {
    first: Duration::from_secs(100),
    max: Duration::from_secs(1000),
};

/// `/x` and `/y` on host `a.example`.
fn x() -> Url {
    url("http://a.example/x")
}

fn y() -> Url {
    url("http://a.example/y")
}

fn trouble() -> HostAnswer {
    HostAnswer::Trouble("HTTP 503 Service Unavailable".into())
}

#[tokio::test]
async fn at_most_per_host_requests_go_at_once() {
    let hosts = Hosts::new(2, NO_PAUSE);
    let host = hosts.of(&x()).unwrap();
    let same = hosts.of(&y()).unwrap();
    assert!(Arc::ptr_eq(&host, &same));
    let first = go(host.admit(&x()).await);
    let _second = go(same.admit(&y()).await);
    assert!(
        host.admit(&x()).now_or_never().is_none(),
        "a third went at once"
    );
    let elsewhere = url("http://b.example/x");
    go(hosts.of(&elsewhere).unwrap().admit(&elsewhere).await);
    drop(first);
    go(host.admit(&x()).await);
}

/// A reload's `per_host`: raised, more go at once at once; lowered under
/// the requests in flight, none goes until they are under the new limit.
/// New hosts get it too.
#[tokio::test]
async fn a_reloaded_per_host_changes_every_host_in_place() {
    let hosts = Hosts::new(2, NO_PAUSE);
    let host = hosts.of(&x()).unwrap();
    let mut held = vec![go(host.admit(&x()).await), go(host.admit(&x()).await)];
    hosts.set_per_host(3);
    held.push(go(host.admit(&x()).await));
    assert!(host.admit(&x()).now_or_never().is_none(), "a fourth went");
    hosts.set_per_host(1);
    // Three in flight, one allowed: two must end before another goes.
    held.pop();
    tokio::task::yield_now().await;
    assert!(host.admit(&x()).now_or_never().is_none(), "over the limit");
    held.pop();
    tokio::task::yield_now().await;
    assert!(host.admit(&x()).now_or_never().is_none(), "at the limit");
    held.pop();
    go(host.admit(&x()).await);
    let elsewhere = url("http://b.example/x");
    let other = hosts.of(&elsewhere).unwrap();
    let _one = go(other.admit(&elsewhere).await);
    assert!(
        other.admit(&elsewhere).now_or_never().is_none(),
        "new host: 1"
    );
}

#[tokio::test]
async fn after_trouble_one_request_probes_and_the_others_wait_for_it() {
    let hosts = Hosts::new(8, NO_PAUSE);
    let host = hosts.of(&x()).unwrap();
    let failed = go(host.admit(&x()).await);
    failed.answered(trouble());
    drop(failed);
    let probe = go(host.admit(&x()).await);
    let waiting = wait(host.admit(&y()).await);
    assert_eq!(waiting.until, None, "waits for the probe, not for a time");
    assert!(waiting.reason.contains("HTTP 503"), "{}", waiting.reason);
    let woken = waiting.changed();
    probe.answered(HostAnswer::Healthy);
    woken.await;
    drop(probe);
    let after = go(host.admit(&x()).await);
    assert!(
        !after.probe.load(Ordering::Acquire),
        "healthy again: no probe"
    );
}

/// A path that failed waits out the backoff; another path of the host
/// may be asked meanwhile (one at a time), and a good answer for it ends
/// the trouble for all.
#[tokio::test]
async fn a_path_that_failed_waits_out_the_backoff_others_may_probe() {
    let hosts = Hosts::new(8, LONG);
    let host = hosts.of(&x()).unwrap();
    go(host.admit(&x()).await).answered(trouble());
    let until = wait(host.admit(&x()).await).until.expect("a time");
    let left = until - Instant::now();
    assert!(
        left > Duration::from_secs(49) && left <= Duration::from_secs(100),
        "{left:?}"
    );
    let probe = go(host.admit(&y()).await);
    assert!(probe.probe.load(Ordering::Acquire));
    probe.answered(trouble());
    drop(probe);
    assert!(
        wait(host.admit(&y()).await).until.is_some(),
        "/y failed too"
    );
    let z = url("http://a.example/z");
    go(host.admit(&z).await).answered(HostAnswer::Healthy);
    go(host.admit(&x()).await);
}

#[tokio::test]
async fn a_probe_that_ends_without_an_answer_lets_the_others_go() {
    let hosts = Hosts::new(8, NO_PAUSE);
    let host = hosts.of(&x()).unwrap();
    go(host.admit(&x()).await).answered(HostAnswer::Trouble("refused".into()));
    let probe = go(host.admit(&x()).await);
    wait(host.admit(&y()).await);
    drop(probe); // a shutdown, say
    let next = go(host.admit(&y()).await);
    assert!(
        next.probe.load(Ordering::Acquire),
        "still after trouble: a probe"
    );
}

#[tokio::test]
async fn retry_after_keeps_every_path_away_until_then_capped() {
    let hosts = Hosts::new(8, NO_PAUSE);
    let host = hosts.of(&x()).unwrap();
    let busy = |after| HostAnswer::Busy {
        after,
        answer: "HTTP 503 (Retry-After)".into(),
    };
    go(host.admit(&x()).await).answered(busy(Duration::from_secs(30)));
    let until = wait(host.admit(&y()).await).until.expect("a time");
    let left = until - Instant::now();
    assert!(
        left > Duration::from_secs(29) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    // Other answers meanwhile (requests that were in flight) do not
    // shorten it.
    host.answered("/z", trouble(), false);
    host.answered("/w", HostAnswer::Healthy, false);
    assert_eq!(wait(host.admit(&x()).await).until, Some(until));

    let elsewhere = url("http://b.example/x");
    let other = hosts.of(&elsewhere).unwrap();
    go(other.admit(&elsewhere).await).answered(busy(Duration::from_secs(86_400)));
    let capped = wait(other.admit(&elsewhere).await).until.expect("a time") - Instant::now();
    assert!(
        capped <= MAX_RETRY_AFTER && capped > MAX_RETRY_AFTER / 2,
        "{capped:?}"
    );
}

#[tokio::test]
async fn trouble_of_requests_in_flight_together_is_one_step_of_backoff() {
    let hosts = Hosts::new(8, LONG);
    let host = hosts.of(&x()).unwrap();
    let (a, b) = (go(host.admit(&x()).await), go(host.admit(&y()).await));
    a.answered(trouble());
    b.answered(trouble());
    assert_eq!(host.lock().failures, 1);
    let left = wait(host.admit(&y()).await).until.expect("a time") - Instant::now();
    assert!(
        left <= Duration::from_secs(100) && left > Duration::from_secs(49),
        "{left:?}"
    );
}

#[tokio::test]
async fn idle_hosts_are_forgotten_those_with_something_to_remember_are_not() {
    let hosts = Hosts::new(8, LONG);
    let failing = hosts.of(&x()).unwrap();
    go(failing.admit(&x()).await).answered(trouble());
    drop(failing);
    for n in 0..FORGET_IDLE_HOSTS_AT + 10 {
        let other = url(&format!("http://h{n}.example/x"));
        go(hosts.of(&other).unwrap().admit(&other).await).answered(HostAnswer::Healthy);
    }
    let known = hosts.hosts.lock().unwrap().len();
    assert!(known < FORGET_IDLE_HOSTS_AT, "{known} hosts kept");
    let failing = hosts.of(&x()).unwrap();
    assert!(
        wait(failing.admit(&x()).await).until.is_some(),
        "its trouble was forgotten"
    );
}

#[tokio::test]
async fn over_http2_more_requests_share_a_connection() {
    let hosts = Hosts::new(2, NO_PAUSE);
    let host = hosts.of(&x()).unwrap();
    let first = go(host.admit(&x()).await);
    first.spoke(reqwest::Version::HTTP_11);
    let second = go(host.admit(&x()).await);
    assert!(
        host.admit(&x()).now_or_never().is_none(),
        "HTTP/1.1: two at once"
    );
    second.spoke(reqwest::Version::HTTP_2);
    second.spoke(reqwest::Version::HTTP_2); // once is enough
    let mut held = vec![first, second];
    for _ in 2..2 * STREAMS_PER_CONNECTION {
        held.push(go(host.admit(&x()).await));
    }
    assert!(
        host.admit(&x()).now_or_never().is_none(),
        "more than allowed"
    );
}
