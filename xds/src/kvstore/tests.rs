use super::*;

#[test]
fn object_keys_round_trip_and_bad_keys_are_named() {
    let k = object_key("CiliumNetworkPolicy", Some("default"), "rule1");
    assert_eq!(k, "/membrane/objects/v1/CiliumNetworkPolicy/default/rule1");
    assert_eq!(
        parse_object_key(&k).unwrap(),
        (
            "CiliumNetworkPolicy".into(),
            Some("default".into()),
            "rule1".into()
        )
    );
    let k = object_key("Node", None, "n1");
    assert_eq!(parse_object_key(&k).unwrap().2, "n1");
    let e = parse_object_key("/membrane/objects/v1/Secret/default/x").unwrap_err();
    assert!(e.contains("kind \"Secret\""), "{e}");
    let e = parse_object_key("/membrane/objects/v1/Pod/x").unwrap_err();
    assert!(e.contains("Pod/NAMESPACE/NAME"), "{e}");
}

#[test]
fn files_split_into_keyed_objects_and_invalid_ones_are_named() {
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: r1}\nspec: {endpointSelector: {}}\n---\nkind: Node\nmetadata: {name: n1}\n";
    let objs = objects_from_file("a.yaml", text, &[]).unwrap();
    assert_eq!(
        objs.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        vec![
            "/membrane/objects/v1/CiliumNetworkPolicy/default/r1",
            "/membrane/objects/v1/Node/n1"
        ]
    );
    assert!(objs[0].value.contains("\"namespace\":\"default\""));
    let e = objects_from_file("a.yaml", text, &["CiliumNetworkPolicy"]).unwrap_err();
    assert!(e[0].contains("a.yaml: Node n1: kind"), "{e:?}");
    let bad = text.replace("endpointSelector: {}", "endpointSelector: {matchLabels: 7}");
    let e = objects_from_file("a.yaml", &bad, &[]).unwrap_err();
    assert!(
        e[0].contains("a.yaml: CiliumNetworkPolicy default/r1: spec.endpointSelector"),
        "{e:?}"
    );
}
