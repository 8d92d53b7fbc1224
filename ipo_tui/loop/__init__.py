"""The loop: generate -> judge -> pairs for a prompt set (stages), the iterations that train policy
k+1 on policy k's pairs, and the hand-off of a new policy to a server."""
