//! `descriptor`: the small things a client names data and models with.
//! The bytes as a protobuf `FlightDescriptor` (DoPut's and DoExchange's
//! first message) whose path becomes a `PartitionKey` or `ModelKey`; as a
//! protobuf `Ticket` and as raw ticket bytes (DoGet) for `StateTicket`; and
//! as text for `column_list` (the `x-stoker-keep` header and a state's
//! `features`). What parses must print back to the same value.

use arrow_flight::{FlightDescriptor, Ticket};
use prost::Message;
use stoker_core::protocol::{column_list, ModelKey, PartitionKey, StateTicket};
use stoker_core::{Error, Result};

use super::{byte_mutator, check, reached, refused, Target};

pub fn target() -> Target {
    Target {
        name: "descriptor",
        about: "FlightDescriptor / Ticket protobuf, ticket bytes, keep-header text -> PartitionKey, ModelKey, StateTicket, column_list",
        seeds,
        run,
        mutate: byte_mutator,
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let path = |p: &[&str]| FlightDescriptor::new_path(p.iter().map(|s| s.to_string()).collect());
    let partition = PartitionKey::train("churn", 7, "v3");
    let mut out = vec![
        FlightDescriptor::new_path(partition.path()).encode_to_vec(),
        path(&["models", "churn"]).encode_to_vec(),
        path(&["models", "churn", "3"]).encode_to_vec(),
        path(&["jobs", "churn"]).encode_to_vec(),
        path(&["partition", "j", "4294967295", ""]).encode_to_vec(),
        path(&["validation", "j", "0", "v1"]).encode_to_vec(),
        FlightDescriptor::new_cmd(b"models/m".to_vec()).encode_to_vec(),
        b"a, b,,c ,".to_vec(),
        b"features,label,id".to_vec(),
    ];
    for t in [
        StateTicket::Job("churn".into()),
        StateTicket::Model(ModelKey::latest("m")),
        StateTicket::Model(ModelKey {
            name: "m".into(),
            version: Some(12),
        }),
    ] {
        out.push(t.text().into_bytes());
        out.push(
            Ticket {
                ticket: t.text().into_bytes().into(),
            }
            .encode_to_vec(),
        );
    }
    out
}

fn run(input: &[u8]) -> Result<()> {
    let mut parsed = false;
    if let Ok(d) = FlightDescriptor::decode(input) {
        parsed = true;
        if let Some(key) = check(PartitionKey::from_path(&d.path)) {
            reached("descriptor: partition key");
            assert_eq!(
                PartitionKey::from_path(&key.path()).ok(),
                Some(key.clone()),
                "a partition key reads back from its path"
            );
        }
        if check(ModelKey::from_path(&d.path)).is_some() {
            reached("descriptor: model key");
        }
    }
    let tickets = Ticket::decode(input)
        .ok()
        .map(|t| t.ticket.to_vec())
        .into_iter()
        .chain([input.to_vec()]);
    for ticket in tickets {
        if let Some(t) = check(StateTicket::parse(&ticket)) {
            parsed = true;
            reached("descriptor: state ticket");
            assert_eq!(
                StateTicket::parse(t.text().as_bytes()).ok(),
                Some(t.clone()),
                "a ticket reads back from its text"
            );
        }
    }
    let text = String::from_utf8_lossy(input);
    let columns = column_list(&text);
    assert_eq!(
        column_list(&columns.join(",")),
        columns,
        "a column list reads back from its names"
    );
    if parsed {
        Ok(())
    } else {
        Err(refused(Error::invalid(
            "neither a descriptor, a ticket protobuf nor a ticket",
        )))
    }
}
