"""The open-bank GraphQL endpoint: a drop-in for the reference's graphql-endpoint, and the bank's page."""
