//! Tokens: every RPC, through stoker's client and a plain Flight client,
//! refuses a missing or wrong token and never echoes the right one.

use std::time::Duration;

use stoker_core::ErrorKind;
use stoker_server::{start, ServerConfig};

use crate::common::*;

/// A server that wants the token `s3cret`.
async fn token_server() -> stoker_server::RunningServer {
    let config = ServerConfig {
        token: Some("s3cret".into()),
        ..config()
    };
    start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_required_and_checked() {
    let server = token_server().await;
    let e = connect(&server, None).await.health().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    let e = connect(&server, Some("wrong"))
        .await
        .health()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(!e.message().contains("s3cret"));
    assert_eq!(
        connect(&server, Some("s3cret"))
            .await
            .health()
            .await
            .unwrap()["status"],
        "serving"
    );
    server.stop().await.unwrap();

    let e = start(ServerConfig {
        host: "0.0.0.0".into(),
        ..config()
    })
    .await
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("without a token"), "{e}");
}

/// A Flight method, called with a throwaway request by [`call`].
#[derive(Debug)]
enum Rpc {
    Handshake,
    ListFlights,
    GetFlightInfo,
    DoGet,
    DoPut,
    DoExchange,
    ListActions,
    DoAction(String),
}

/// Calls `rpc` through a plain Flight client (not stoker's) that sends
/// `token`, when given, as `authorization: Bearer <token>` and, for
/// Handshake, as the payload; reads the whole answer and returns its first
/// error.
async fn call(uri: &str, rpc: &Rpc, token: Option<&str>) -> Result<(), tonic::Status> {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::{Action, Criteria, Empty, FlightDescriptor, HandshakeRequest, Ticket};
    use futures::TryStreamExt;
    use tonic::{Response, Status, Streaming};

    async fn drain<T>(answer: Result<Response<Streaming<T>>, Status>) -> Result<(), Status> {
        let mut messages = answer?.into_inner();
        while messages.message().await?.is_some() {}
        Ok(())
    }

    let channel = tonic::transport::Channel::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header: Option<tonic::metadata::AsciiMetadataValue> =
        token.map(|t| format!("Bearer {t}").parse().unwrap());
    let mut client =
        FlightServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(h) = &header {
                req.metadata_mut().insert("authorization", h.clone());
            }
            Ok(req)
        });
    // DoPut and DoExchange send one small batch behind a descriptor.
    let upload = |path: &[&str]| {
        let descriptor = FlightDescriptor::new_path(path.iter().map(|p| p.to_string()).collect());
        FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter([Ok(rings(10, 1))]))
            .try_collect::<Vec<_>>()
    };
    let models = || FlightDescriptor::new_path(vec!["models".into(), "nope".into()]);
    let answer = async {
        match rpc {
            Rpc::Handshake => {
                let hello = HandshakeRequest {
                    protocol_version: 0,
                    payload: token.unwrap_or_default().as_bytes().to_vec().into(),
                };
                drain(client.handshake(futures::stream::iter([hello])).await).await
            }
            Rpc::ListFlights => drain(client.list_flights(Criteria::default()).await).await,
            Rpc::GetFlightInfo => client.get_flight_info(models()).await.map(drop),
            Rpc::DoGet => drain(client.do_get(Ticket::new("state/nope")).await).await,
            Rpc::DoPut => {
                let data = upload(&["_echo"]).await.unwrap();
                drain(client.do_put(futures::stream::iter(data)).await).await
            }
            Rpc::DoExchange => {
                let data = upload(&["models", "nope"]).await.unwrap();
                drain(client.do_exchange(futures::stream::iter(data)).await).await
            }
            Rpc::ListActions => drain(client.list_actions(Empty {}).await).await,
            Rpc::DoAction(kind) => {
                let action = Action::new(kind.clone(), "{}");
                drain(client.do_action(action).await).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .unwrap_or_else(|_| panic!("{rpc:?} did not answer within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_refuses_a_missing_or_wrong_token() {
    let server = token_server().await;
    let uri = format!("http://{}", server.addr);
    let mut rpcs = vec![
        Rpc::Handshake,
        Rpc::ListFlights,
        Rpc::GetFlightInfo,
        Rpc::DoGet,
        Rpc::DoPut,
        Rpc::DoExchange,
        Rpc::ListActions,
    ];
    let actions = stoker_core::protocol::ACTIONS;
    assert!(actions.len() >= 8, "{actions:?}");
    rpcs.extend(
        actions
            .iter()
            .map(|(name, _)| Rpc::DoAction(name.to_string())),
    );
    for rpc in &rpcs {
        for token in [None, Some("wrong")] {
            let status = call(&uri, rpc, token)
                .await
                .expect_err(&format!("{rpc:?} with token {token:?} was answered"));
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{rpc:?} with token {token:?}: {status:?}"
            );
            assert!(!status.message().contains("s3cret"), "{status:?}");
        }
        // The right token gets past the check, whatever the throwaway
        // request earns after it.
        if let Err(status) = call(&uri, rpc, Some("s3cret")).await {
            assert_ne!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{rpc:?} with the right token: {status:?}"
            );
        }
    }
    // PollFlightInfo and GetSchema are not implemented: they answer
    // UNIMPLEMENTED to anyone and carry nothing.
    server.stop().await.unwrap();
}
