"""The reference endpoint's GraphQL schema (schema.graphql, the same types, fields, arguments and descriptions)
bound to the bank."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from ariadne import QueryType, SubscriptionType, make_executable_schema
from graphql import GraphQLResolveInfo, GraphQLSchema

from open_bank_endpoint.bank import Bank, StreamFilter

SDL = (Path(__file__).resolve().parent / "schema.graphql").read_text()


def _bank(info: GraphQLResolveInfo) -> Bank:
    bank: Bank = info.context["bank"]
    return bank


def build_schema() -> GraphQLSchema:
    query = QueryType()
    subscription = SubscriptionType()

    @query.field("transaction_by_id")
    async def transaction_by_id(_: Any, info: GraphQLResolveInfo, id: int) -> dict[str, Any] | None:
        return await _bank(info).transaction(id)

    @query.field("transactions_by_iban")
    async def transactions_by_iban(_: Any, info: GraphQLResolveInfo, iban: str, max_items: int) -> list[Any]:
        return await _bank(info).transactions_by_iban(iban, max_items)

    @query.field("all_last_transactions")
    async def all_last_transactions(_: Any, info: GraphQLResolveInfo) -> list[Any]:
        return await _bank(info).all_last_transactions()

    @subscription.source("stream_transactions")
    async def stream_transactions(_: Any, info: GraphQLResolveInfo, **filters: Any) -> AsyncGenerator[Any, None]:
        async for row in _bank(info).stream(StreamFilter(**filters)):
            yield row

    @subscription.source("get_account")
    async def get_account(_: Any, info: GraphQLResolveInfo, username: str, password: str) -> AsyncGenerator[Any, None]:
        yield await _bank(info).get_account(username, password)

    @subscription.source("money_transfer")
    async def money_transfer(_: Any, info: GraphQLResolveInfo, **args: Any) -> AsyncGenerator[Any, None]:
        yield await _bank(info).money_transfer(
            args["uuid"], args["username"], args["token"], args["amount"], args["from"], args["to"], args["descr"]
        )

    def same(value: Any, *_: Any, **__: Any) -> Any:
        return value

    for name in ("stream_transactions", "get_account", "money_transfer"):
        subscription.set_field(name, same)
    return make_executable_schema(SDL, query, subscription)
