-- An email that already has an account is also handed a one-time code when a workspace adds it
-- (the login it yields reaches only that membership, ``auth.reaches``). Its membership counts
-- at once, as before, and the account is no newcomer: an open code of this kind does not make
-- the member's status ``invited``. 1: the email had an account when the code was issued.
ALTER TABLE invitations ADD COLUMN account_existed BIGINT NOT NULL DEFAULT 0;
