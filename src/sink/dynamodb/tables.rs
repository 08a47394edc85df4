//! `classpulse tables create`: both tables for local development and tests, as production
//! creates them (see `deploy/terraform/dynamodb.tf`): on-demand billing, string keys `pk` and
//! `sk`, TTL on `ttl`.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};

use aws_sdk_dynamodb::client::Waiters;

use super::{PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE};

/// The members table's key.
pub const MEMBER_KEY: &str = "member_id";

/// Why a table could not be created.
#[derive(Debug, thiserror::Error)]
#[error("table {table}: {detail}")]
pub struct CreateError {
    /// The table.
    pub table: String,
    /// What DynamoDB said.
    pub detail: String,
}

/// Whether the table was made or already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Created now.
    Created,
    /// It existed (left as it is).
    Existed,
}

/// Which table's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// The events and aggregates tables: `pk` and `sk`, TTL on `ttl`.
    Written,
    /// The members table the studios' member system writes: `member_id`, no TTL.
    Members,
}

/// Creates `table` with the schema both classpulse tables share, waits until it is active and
/// turns TTL on. An existing table is left as it is.
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Created, CreateError> {
    create_table_of(client, table, Schema::Written).await
}

/// Creates `table` with `schema` (on-demand billing), waits until it is active and, for the
/// tables classpulse writes, turns TTL on. An existing table is left as it is.
pub async fn create_table_of(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    schema: Schema,
) -> Result<Created, CreateError> {
    let error = |detail: String| CreateError {
        table: table.to_owned(),
        detail,
    };
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("name and type are set")
    };
    let request = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    let request = match schema {
        Schema::Written => request
            .attribute_definitions(attribute(PARTITION_KEY))
            .attribute_definitions(attribute(SORT_KEY))
            .key_schema(key(PARTITION_KEY, KeyType::Hash))
            .key_schema(key(SORT_KEY, KeyType::Range)),
        Schema::Members => request
            .attribute_definitions(attribute(MEMBER_KEY))
            .key_schema(key(MEMBER_KEY, KeyType::Hash)),
    };
    let created = request.send().await;
    let outcome = match created {
        Ok(_) => Created::Created,
        Err(e)
            if aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e)
                == Some("ResourceInUseException") =>
        {
            return Ok(Created::Existed)
        }
        Err(e) => {
            return Err(error(
                aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string(),
            ))
        }
    };
    client
        .wait_until_table_exists()
        .table_name(table)
        .wait(std::time::Duration::from_secs(60))
        .await
        .map_err(|e| error(format!("did not become active: {e}")))?;
    if schema == Schema::Members {
        return Ok(outcome);
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(TTL_ATTRIBUTE)
                .build()
                .expect("enabled and name are set"),
        )
        .send()
        .await
        .map_err(|e| {
            error(format!(
                "TTL not enabled: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            ))
        })?;
    Ok(outcome)
}
