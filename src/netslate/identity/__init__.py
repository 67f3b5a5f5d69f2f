"""Identity: who may act. API tokens now; people (users, directories, sessions) and machines next."""
