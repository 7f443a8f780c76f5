use std::path::PathBuf;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::rpc;
use prost::Message as _;

use super::*;
use crate::agent::sinks::xds::mesh::{CertificateSource, MeshSettings};
use crate::agent::sinks::xds::tests::view;
use crate::agent::view::AgentView;

const CART: &str = "cart.shop.svc.clusterset.local";

fn mesh() -> MeshSettings {
    MeshSettings::new(CertificateSource::File {
        path: PathBuf::from("/etc/envoy/svid.json"),
        secret: "svid".into(),
    })
}

fn snapshot(view: &AgentView) -> Snapshot {
    Snapshot::build(view, Some(&mesh()))
}

fn request(kind: Kind, subscribe: &[&str], unsubscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: kind.type_url().into(),
        resource_names_subscribe: subscribe.iter().map(ToString::to_string).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }
}

fn ack(kind: Kind, response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { response_nonce: response.nonce.clone(), ..request(kind, &[], &[]) }
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn a_wildcard_subscription_is_answered_even_empty_then_gets_only_changes() {
    let mut sub = DeltaSubscription::new(Kind::Clusters);
    let empty = snapshot(&AgentView::default());
    let first =
        sub.on_request(request(Kind::Clusters, &[], &[]), &empty).expect("ok").expect("sent");
    assert!(first.resources.is_empty() && first.removed_resources.is_empty());
    assert!(sub.on_request(ack(Kind::Clusters, &first), &empty).expect("ok").is_none());

    let full = snapshot(&view());
    let second = sub.on_change(&full).expect("pushed");
    assert_eq!(names(&second).len(), 4, "every cluster: {:?}", names(&second));
    assert!(sub.on_request(ack(Kind::Clusters, &second), &full).expect("ok").is_none());
    assert!(sub.on_change(&snapshot(&view())).is_none(), "same content, nothing sent");

    // One import gone: its cluster is removed, nothing else is sent again.
    let mut fewer = view();
    fewer.imports.retain(|key, _| key.name == "api");
    let third = sub.on_change(&snapshot(&fewer)).expect("pushed");
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources, [CART]);
    assert_ne!(third.nonce, second.nonce);
}

#[test]
fn what_the_client_holds_is_not_sent_again_after_a_reconnect() {
    let full = snapshot(&view());
    let mut sub = DeltaSubscription::new(Kind::Endpoints);
    let first = sub.on_request(request(Kind::Endpoints, &[CART], &[]), &full).expect("ok");
    let first = first.expect("sent");
    assert_eq!(names(&first), [CART]);
    let held = first.resources[0].version.clone();

    let mut again = DeltaSubscription::new(Kind::Endpoints);
    let mut reconnect = request(Kind::Endpoints, &[CART], &[]);
    reconnect.initial_resource_versions.insert(CART.into(), held);
    assert!(again.on_request(reconnect, &full).expect("ok").is_none(), "nothing changed");
}

#[test]
fn a_gone_assignment_is_sent_empty_once_and_unsubscribed_names_are_forgotten() {
    let full = snapshot(&view());
    let mut sub = DeltaSubscription::new(Kind::Endpoints);
    sub.on_request(request(Kind::Endpoints, &[CART, "nope.shop.svc.clusterset.local"], &[]), &full)
        .expect("ok")
        .expect("sent");
    let mut fewer = view();
    fewer.imports.retain(|key, _| key.name == "api");
    let gone = sub.on_change(&snapshot(&fewer)).expect("tombstone");
    assert_eq!(names(&gone), [CART]);
    let cla = ClusterLoadAssignment::decode(
        gone.resources[0].resource.as_ref().expect("resource").value.as_slice(),
    )
    .expect("cla");
    assert!(cla.endpoints.is_empty(), "Envoy drops the endpoints of a gone import");
    assert!(sub.on_change(&snapshot(&fewer)).is_none(), "sent once");
    // Back again: sent; unsubscribed: never again.
    let back = sub.on_change(&full).expect("back");
    assert_eq!(names(&back), [CART]);
    assert!(sub.on_request(request(Kind::Endpoints, &[], &[CART]), &full).expect("ok").is_none());
    let mut moved = view();
    for import in moved.imports.values_mut() {
        import.clusters.pop();
    }
    let changed = sub.on_change(&snapshot(&moved));
    assert!(changed.is_none(), "an unsubscribed name is not pushed: {changed:?}");
}

#[test]
fn named_resources_that_do_not_exist_are_waited_for() {
    let mut sub = DeltaSubscription::new(Kind::Secrets);
    let full = snapshot(&view());
    assert!(
        sub.on_request(request(Kind::Secrets, &["spiffe://z.test"], &[]), &full)
            .expect("ok")
            .is_none()
    );
    let all = sub.on_request(request(Kind::Secrets, &["ALL"], &[]), &full).expect("ok");
    assert_eq!(all.as_ref().map(names), Some(vec!["ALL"]));
}

#[test]
fn a_nack_is_answered_by_nothing_and_the_wrong_type_is_refused() {
    let full = snapshot(&view());
    let mut sub = DeltaSubscription::new(Kind::Listeners);
    let first = sub.on_request(request(Kind::Listeners, &[], &[]), &full).expect("ok");
    let first = first.expect("wildcard answered");
    let mut nack = ack(Kind::Listeners, &first);
    nack.error_detail = Some(rpc::Status { code: 3, message: "bad".into(), details: Vec::new() });
    assert!(sub.on_request(nack, &full).expect("ok").is_none());
    assert!(sub.on_request(request(Kind::Routes, &[], &[]), &full).is_err());
}
