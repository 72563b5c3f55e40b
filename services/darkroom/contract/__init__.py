"""The wire vocabulary every role shares: task states, storage folders, the claim record, the
role table, the limits of what crosses the wire and the errors of calls between services.

Pure Python (no falcon, requests or Pillow): any role may import it, and it imports no role.
"""
