"""The nodes: the only place that talks to the Ethereum / GoQuorum nodes.

`transport` posts one JSON-RPC request to one node and classifies its failures; `pool` chooses
among the nodes, checks their health and fails over (httpx's transports under its client).
"""
