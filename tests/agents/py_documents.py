"""The JSON documents the agent test servers parse: a list of small objects, about
MB megabytes of text, built once per size."""

import json

_documents = {}


def document(mb):
    if mb not in _documents:
        item = json.dumps({"id": 12345, "name": "loopscope", "tags": ["a", "b", "c"],
                           "value": 3.14159})
        n = max(1, round(mb * 1024 * 1024 / (len(item) + 1)))
        _documents[mb] = "[" + ",".join([item] * n) + "]"
    return _documents[mb]
