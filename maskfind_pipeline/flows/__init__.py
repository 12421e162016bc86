"""Use cases that combine layers: each Dagster asset or op in `defs/` calls one of these.

Floors, lowest first: storage -> data -> ml -> registry -> evaluation -> flows -> defs. A flow
takes plain objects (stores, a registry, core options) and callbacks for progress; it never
imports Dagster, and nothing below it imports a flow.
"""
