//! Busy polling's two mechanisms against a real tokio runtime: finding the runtime's epoll
//! instance, and spinning until it has an event or the budget is spent. One test in this
//! binary, because finding the descriptor compares the process's descriptors before and
//! after building a runtime, which another test building runtimes meanwhile would upset.

use std::io::Write;
use std::time::{Duration, Instant};

use membrane_proxy::busypoll::{epoll_fds, runtime_epoll, BusyPoll};

#[test]
fn finds_the_runtime_epoll_and_spins_until_it_is_ready() {
    let before = epoll_fds();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let created = epoll_fds().difference(&before).copied().collect();
    let fd = runtime_epoll(&created).expect("the runtime's epoll instance is found");
    assert!(created.contains(&fd));
    // A second, unrelated instance makes the answer ambiguous: none.
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let both = epoll_fds().difference(&before).copied().collect();
    assert_eq!(runtime_epoll(&both), None, "two instances: {both:?}");
    drop(other);

    let budget = Duration::from_millis(30);
    let bp = BusyPoll::new(fd, budget);
    // Nothing ready: the whole budget is spun, then spinning is off.
    let t = Instant::now();
    bp.before_park();
    assert!(
        t.elapsed() >= budget,
        "returned before the budget with nothing ready"
    );
    let t = Instant::now();
    bp.before_park();
    assert!(t.elapsed() < budget, "spun again after an empty spin");

    // A socket registered with the runtime; the driver takes the registration's own
    // readiness (writable) before the spinning starts, as a running loop would have.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let _registered = rt.block_on(async {
        let s = tokio::net::UnixStream::from_std(a).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        s
    });

    // Short sleeps in a row (dense traffic) turn spinning back on, one is not enough; an
    // event ends the spin at once.
    bp.after_unpark();
    assert!(!bp.armed(), "re-armed after one short sleep");
    for _ in 1..membrane_proxy::busypoll::REARM_STREAK {
        bp.before_park();
        bp.after_unpark();
    }
    assert!(bp.armed(), "not re-armed after short sleeps in a row");
    (&b).write_all(b"x").unwrap();
    let t = Instant::now();
    bp.before_park();
    assert!(
        t.elapsed() < budget,
        "spun {:?} although the runtime had an event ready",
        t.elapsed()
    );
    assert!(bp.armed());

    // Once the loop has taken the event nothing is ready: an empty spin turns spinning off
    // again, and a long sleep (sparse traffic) leaves it off.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
    let t = Instant::now();
    bp.before_park();
    assert!(t.elapsed() >= budget, "returned early with nothing ready");
    assert!(!bp.armed(), "still spinning after an empty spin");
    std::thread::sleep(budget * 5);
    bp.after_unpark();
    assert!(!bp.armed(), "re-armed after a long sleep");
}
