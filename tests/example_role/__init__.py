"""A small role written the way docs/adding_a_role.md says: one folder, one registration line.

Data owners each send the server the average of their users' health records (a census-style
aggregate, a common "safe" release); the curious server reads each owner's own average back
from it. Small, but a real role: its phases run through the Role contract and its exchange
through Flower.
"""
