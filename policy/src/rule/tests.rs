use super::*;

#[test]
fn cidr_minus_excepts() {
    let n: IpNet = "10.0.0.0/8".parse().unwrap();
    let parts = subtract(n, &["10.96.0.0/12".parse().unwrap()]);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let covered = |a: IpAddr| parts.iter().any(|p| p.contains(&a));
    assert!(covered(ip("10.0.0.1")));
    assert!(covered(ip("10.255.255.255")));
    assert!(!covered(ip("10.96.0.1")));
    assert!(!covered(ip("10.111.255.255")));
    assert!(covered(ip("10.112.0.0")));
    assert_eq!(parts.len(), 4);
    assert!(subtract(n, &[n]).is_empty());
}

#[test]
fn service_names() {
    for ok in ["http", "http-alt", "h2c", "dns-tcp", "a1"] {
        assert!(is_iana_service_name(ok), "{ok}");
    }
    for bad in [
        "",
        "8o8o8o8o8o8o8o8o",
        "-http",
        "http-",
        "ht--tp",
        "123",
        "ht_tp",
    ] {
        assert!(!is_iana_service_name(bad), "{bad}");
    }
}
