-- An invitation code is minted by someone other than its user, so the login it yields (the
-- refresh token, its access tokens, a console session, PATs the user mints with them) carries
-- the invitation's id and reaches only the memberships that carry the same id: the one the
-- invitation made, and the workspaces created with that login. NULL: the user's own login
-- (tokens) / a membership reached only by the user's own logins (memberships).
ALTER TABLE tokens ADD COLUMN invitation_id TEXT;
ALTER TABLE memberships ADD COLUMN invitation_id TEXT;
-- Memberships made by an invitation before this column: the invitation's id, so that a login
-- redeemed from it keeps reaching the workspace that invited it. Logins redeemed before this
-- migration stay unscoped (NULL): their holders cannot be told apart now.
UPDATE memberships SET invitation_id = (
    SELECT MIN(i.id) FROM invitations i
    WHERE i.workspace_id = memberships.workspace_id AND i.user_id = memberships.user_id);
