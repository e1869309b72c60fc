"""Python client of the dojo service: the verbs of `dojo submit / jobs / logs / cancel / usage`.

    from dojo.client import Client
    c = Client("http://127.0.0.1:8600", token)        # token: DOJO_TOKEN or ~/.config/dojo/token
    job = c.submit({"kind": "train", "model": "mlp", "tiles": 2, "steps": 20})
    for text in c.follow(job["id"]): print(text, end="")

Standard library only (urllib): the client never imports the service or the simulator.
"""

from dojo.client.http import Client, ServiceError, load_token

__all__ = ["Client", "ServiceError", "load_token"]
