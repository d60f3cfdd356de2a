//! Code generated from `proto/dsm.proto` (see that file for the contract).

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("dsm.v1");
